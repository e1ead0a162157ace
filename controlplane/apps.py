from django.apps import AppConfig


class ControlPlaneConfig(AppConfig):
    name = "controlplane"

    def ready(self) -> None:
        from django.db.backends.signals import connection_created

        from controlplane.private import secure_sqlite

        connection_created.connect(secure_sqlite, dispatch_uid="controlplane.secure_sqlite")
