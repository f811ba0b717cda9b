"""``GET /demo``: the browser demo page (only when ``DARKPOSE_DEMO=true``).

One static page (``service/api/static/demo.html``, package data): pick an image or a video
file, or the webcam; the page sends the frames over the ``/pose/stream`` WebSocket, one at a
time, and draws the answered skeletons with their track ids.  The skeleton's keypoint pairs
are filled in from :data:`~darkpose.service.core.types.COCO_SKELETON` when the page is served.
"""

import json
from functools import lru_cache
from importlib import resources

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

from darkpose.service.core.types import COCO_SKELETON

router = APIRouter()


@lru_cache(maxsize=1)
def demo_page() -> str:
    """The demo HTML with the skeleton filled in."""
    text = resources.files("darkpose.service.api").joinpath("static/demo.html").read_text("utf-8")
    return text.replace("__SKELETON__", json.dumps([list(p) for p in COCO_SKELETON]))


@router.get("/demo", response_class=HTMLResponse, include_in_schema=False)
async def demo() -> HTMLResponse:
    return HTMLResponse(demo_page(), headers={"Cache-Control": "no-cache"})
