"""URL routes of the full test site (settings_site): the admin and the views a front-end
recipe test checks through nginx or Apache."""

from django.contrib import admin
from django.urls import path

from . import views_site

urlpatterns = [
    path("admin/", admin.site.urls),
    path("env/<path:rest>", views_site.env),
    path("upload/", views_site.upload),
    path("download/", views_site.download),
    path("boom/", views_site.boom),
    path("log/", views_site.log),
]
