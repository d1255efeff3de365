"""URL routes of the Django test project."""

from django.urls import path

from . import views

urlpatterns = [
    path("", views.index),
    path("form/", views.form),
    path("protected/", views.protected),
    path("cookie/set/", views.cookie_set),
    path("cookie/get/", views.cookie_get),
    path("redirect/", views.go_home),
    path("api/echo/", views.api_echo),
    path("search/", views.search),
]
