"""Query-parameter errors read as sentences: "query parameter 'x': expected X, got Y", with
no doubled "expected" and none of pydantic's own wording."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from tests.test_settings import PYDANTIC_JARGON

BOOL = "expected true or false (also 1/0, yes/no, on/off)"


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("flip=perhaps", f"query parameter 'flip': {BOOL}, got \"perhaps\""),
        ("render=x", f"query parameter 'render': {BOOL}, got \"x\""),
        ("score_threshold=-0.5",
         "query parameter 'score_threshold': expected a number at least 0.05, got \"-0.5\""),
        ("score_threshold=1.5",
         "query parameter 'score_threshold': expected a number at most 1.0, got \"1.5\""),
        ("keypoint_threshold=abc",
         "query parameter 'keypoint_threshold': expected a number, got \"abc\""),
        ("decode=magic",
         "query parameter 'decode': expected one of argmax, standard, dark, got \"magic\""),
        ("max_persons=0", "query parameter 'max_persons': expected a number at least 1, got \"0\""),
        ("max_persons=many", "query parameter 'max_persons': expected an integer, got \"many\""),
        ("max_persons=2.5", "query parameter 'max_persons': expected an integer, got \"2.5\""),
        ("render_format=gif",
         "query parameter 'render_format': expected one of jpeg, png, got \"gif\""),
    ],
)  # fmt: skip
def test_query_errors_read_as_sentences(
    client: TestClient, jpeg_bytes: bytes, query: str, message: str
) -> None:
    r = client.post(f"/pose?{query}", content=jpeg_bytes, headers={"Content-Type": "image/jpeg"})
    assert r.status_code == 422, r.text
    got = r.json()["error"]["message"]
    assert got == message
    assert got.count("expected") == 1 and "expected expected" not in got
    assert not [w for w in PYDANTIC_JARGON if w in got], got
