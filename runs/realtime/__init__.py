"""Live pushes to the browser: websocket routing and consumers, group broadcasts after commit, the web process's
view of which groups have listeners, and the playground's token stream."""
