"""Business rules. Views, forms, tasks and consumers call these and hold no logic of their own."""
