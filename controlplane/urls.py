from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.http import HttpResponse
from django.urls import include, path


def healthz(request):
    return HttpResponse("ok", content_type="text/plain")


urlpatterns = [
    path("admin/", admin.site.urls),
    path("accounts/login/", auth_views.LoginView.as_view(), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("healthz", healthz, name="healthz"),
    path("", include("runs.urls")),
]

handler400 = "runs.views.errors.bad_request"
handler403 = "runs.views.errors.forbidden"
handler404 = "runs.views.errors.not_found"
handler500 = "runs.views.errors.server_error"
