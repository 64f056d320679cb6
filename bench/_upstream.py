"""The test suite's fake OpenAI server (tests/fake_openai.py) as a process of its own, for
benchmarks: `python -m bench._upstream PORT`. Its behaviour is set over HTTP
(`POST /behaviour` with the fields of tests.fake_openai.Behaviour)."""

from __future__ import annotations

import sys

import uvicorn

from tests.fake_openai import Behaviour, fake_openai_app

if __name__ == "__main__":
    uvicorn.run(
        fake_openai_app(Behaviour()),
        host="127.0.0.1",
        port=int(sys.argv[1]),
        log_level="warning",
        access_log=False,
    )
