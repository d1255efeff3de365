"""Views of the full test site: what the app saw of the request, a streamed upload and
download, an error, and log lines at each level."""

import logging
import sys

from django.http import JsonResponse, StreamingHttpResponse
from django.views.decorators.csrf import csrf_exempt

CHUNK = 64 * 1024
PATTERN = bytes(i % 251 for i in range(CHUNK + 251))
logger = logging.getLogger("site")


def env(request, rest):
    meta = request.META
    return JsonResponse({
        "path_info": request.path_info,
        "path": request.path,
        "rest": rest,
        "absolute_uri": request.build_absolute_uri(),
        "host": request.get_host(),
        "meta": {k: meta.get(k) for k in (
            "HTTP_HOST", "SERVER_NAME", "SERVER_PORT", "REMOTE_ADDR", "SCRIPT_NAME",
            "PATH_INFO", "QUERY_STRING", "REQUEST_METHOD", "HTTPS", "wsgi.url_scheme")},
    })


@csrf_exempt
def upload(request):
    """Reads the body in chunks; answers its size and the offset of the first byte that
    differs from the pattern of download() (None when it all matches)."""
    total = 0
    mismatch_at = None
    while True:
        data = request.read(CHUNK)
        if not data:
            break
        start = total % 251
        if mismatch_at is None and data != PATTERN[start:start + len(data)]:
            mismatch_at = total
        total += len(data)
    return JsonResponse({"bytes": total, "pattern_mismatch_at": mismatch_at})


def download(request):
    """?size=N bytes of a repeating pattern (byte p = p % 251), streamed without a length."""
    size = int(request.GET.get("size", "0"))

    def body():
        offset = 0
        while offset < size:
            n = min(CHUNK, size - offset)
            start = offset % 251
            yield PATTERN[start:start + n]
            offset += n

    return StreamingHttpResponse(body(), content_type="application/octet-stream")


def boom(request):
    raise RuntimeError("boom-marker: raised in a Django view")


def log(request):
    logger.debug("site-debug-marker")
    logger.info("site-info-marker")
    logger.warning("site-warning-marker")
    print("site-print-marker")
    sys.stdout.flush()
    return JsonResponse({"logged": True})
