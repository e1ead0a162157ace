from django.urls import path

from runs.realtime.consumers import RunConsumer, RunListConsumer
from runs.realtime.data import DataConsumer
from runs.realtime.playground import PlaygroundConsumer

websocket_urlpatterns = [
    path("ws/runs/", RunListConsumer.as_asgi()),
    path("ws/runs/<int:run_id>/", RunConsumer.as_asgi()),
    path("ws/deployments/<int:deployment_id>/playground/", PlaygroundConsumer.as_asgi()),
    path("ws/data/sources/<int:source_id>/", DataConsumer.as_asgi()),
    path("ws/data/prep/<int:prep_id>/", DataConsumer.as_asgi()),
]
