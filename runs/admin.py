from django.contrib import admin

from runs.models import Alert, AuditEvent, Checkpoint, Cluster, DataMixRecipe, DataSource, RecipeEntry, Run


class ReadOnlyAdmin(admin.ModelAdmin):
    """Browsable, never editable here: changes go through the services so they are audited."""

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(AuditEvent)
class AuditEventAdmin(ReadOnlyAdmin):
    list_display = ("id", "created_at", "actor", "action", "object_type", "object_id", "run_id", "message")
    list_filter = ("action", "object_type")
    search_fields = ("actor", "action", "object_repr", "message")
    readonly_fields = [f.name for f in AuditEvent._meta.fields]

    def has_view_permission(self, request, obj=None):
        return request.user.has_perm("runs.view_audit")


@admin.register(Run)
class RunAdmin(ReadOnlyAdmin):
    list_display = ("id", "name", "owner", "status", "preset", "cluster", "recipe", "created_at")
    list_filter = ("status", "preset", "cluster")
    search_fields = ("name",)


class RecipeEntryInline(admin.TabularInline):
    model = RecipeEntry
    extra = 0

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(DataMixRecipe)
class DataMixRecipeAdmin(ReadOnlyAdmin):
    list_display = ("name", "version", "created_by", "created_at")
    inlines = [RecipeEntryInline]


@admin.register(Cluster)
class ClusterAdmin(admin.ModelAdmin):
    list_display = ("name", "backend", "nodes", "gpus_per_node", "gpu_type", "gpu_memory_gb", "runnable")


@admin.register(DataSource)
class DataSourceAdmin(admin.ModelAdmin):
    list_display = ("name", "language", "shards_dir")


@admin.register(Checkpoint)
class CheckpointAdmin(ReadOnlyAdmin):
    list_display = ("run", "step", "tag", "size_bytes", "created_at")


@admin.register(Alert)
class AlertAdmin(ReadOnlyAdmin):
    list_display = ("run", "kind", "severity", "step", "message", "created_at")
    list_filter = ("kind", "severity")
