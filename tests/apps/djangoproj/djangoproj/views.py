"""Views of the Django test project: form POST, cookies, redirects, JSON."""

import json

from django.http import HttpResponse, JsonResponse
from django.shortcuts import redirect
from django.template import engines
from django.views.decorators.csrf import csrf_exempt

PAGE = engines["django"].from_string(
    "<!doctype html><title>{{ title }}</title><h1>{{ title }}</h1><p>{{ message }}</p>"
    "{% if items %}<ul>{% for i in items %}<li>{{ i }}</li>{% endfor %}</ul>{% endif %}"
)


def index(request):
    name = request.GET.get("name", "world")
    return HttpResponse(PAGE.render({"title": "Django on fcgihost", "message": "Hello, %s!" % name}))


@csrf_exempt
def form(request):
    if request.method != "POST":
        return HttpResponse('<form method="post"><input name="name"><button>Send</button></form>')
    return HttpResponse(PAGE.render({
        "title": "Thanks",
        "message": "Thanks, %s" % request.POST.get("name", ""),
        "items": request.POST.getlist("tag"),
    }))


def protected(request):
    # No csrf_exempt: a POST without a CSRF token must be refused by CsrfViewMiddleware (403).
    return HttpResponse("protected ok")


def cookie_set(request):
    resp = HttpResponse("cookie set")
    resp.set_signed_cookie("flavor", request.GET.get("value", "vanilla"), salt="fcgihost", httponly=True)
    resp.set_cookie("plain", "yes")
    return resp


def cookie_get(request):
    return JsonResponse({
        "flavor": request.get_signed_cookie("flavor", default=None, salt="fcgihost"),
        "plain": request.COOKIES.get("plain"),
    })


def go_home(request):
    return redirect("/?name=redirected")


@csrf_exempt
def api_echo(request):
    try:
        data = json.loads(request.body or b"null")
    except ValueError:
        return JsonResponse({"error": "invalid JSON"}, status=400)
    return JsonResponse({
        "received": data,
        "method": request.method,
        "content_type": request.content_type,
        "path": request.path,
    }, status=201 if request.method == "POST" else 200)


def search(request):
    return JsonResponse({"q": request.GET.getlist("q")})
