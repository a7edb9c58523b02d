from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path

from streaming import views

urlpatterns = [
    path("", include("streaming.urls")),
    path("accounts/login/", auth_views.LoginView.as_view(), name="login"),
    path("accounts/logout/", views.LogoutView.as_view(), name="logout"),
    path("admin/", admin.site.urls),
    path("healthz", views.healthz, name="healthz"),
]

handler404 = "streaming.views.page_not_found"
handler500 = "streaming.views.server_error"
