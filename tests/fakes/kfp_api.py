"""A loopback HTTP server speaking the few KFP v2beta1 REST calls that kfp.Client makes to submit runs.

No Kubeflow Pipelines API server can run on this machine, so the submit/schedule tests talk to this
stand-in through the real kfp.Client and real HTTP. It records every request and answers with the shapes
the real API returns (experiment_id, run_id, recurring_run_id, ...).
"""

from __future__ import annotations

import json
import uuid
from typing import Any
from urllib.parse import ParseResult, parse_qs

from fakes.loopback import LoopbackApi

JSON = "application/json"


class FakeKfpApi(LoopbackApi):
    def __init__(self) -> None:
        super().__init__()
        self.requests: list[dict] = []
        self.experiments: dict[str, dict] = {}
        self.runs: list[dict] = []
        self.recurring_runs: list[dict] = []

    @property
    def host(self) -> str:
        return self.url

    def handle(self, method: str, url: ParseResult, body: Any) -> tuple[int, Any, str]:
        if method == "GET":
            self.requests.append({"method": "GET", "path": url.path, "query": parse_qs(url.query)})
            if url.path.endswith("/healthz"):
                return 200, {"multi_user": False}, JSON
            if url.path == "/apis/v2beta1/experiments":
                flt = parse_qs(url.query).get("filter", ["{}"])[0]
                wanted = [p.get("stringValue", p.get("string_value")) for p in json.loads(flt).get("predicates", [])]
                found = [e for e in self.experiments.values() if e["display_name"] in wanted]
                return 200, {"experiments": found, "total_size": len(found)}, JSON
        elif method == "POST":
            body = body or {}
            self.requests.append({"method": "POST", "path": url.path, "body": body})
            if url.path == "/apis/v2beta1/experiments":
                exp = {**body, "experiment_id": uuid.uuid4().hex}
                self.experiments[exp["experiment_id"]] = exp
                return 200, exp, JSON
            if url.path == "/apis/v2beta1/runs":
                run = {**body, "run_id": uuid.uuid4().hex, "state": "PENDING"}
                self.runs.append(run)
                return 200, run, JSON
            if url.path == "/apis/v2beta1/recurringruns":
                rec = {**body, "recurring_run_id": uuid.uuid4().hex, "status": "ENABLED"}
                self.recurring_runs.append(rec)
                return 200, rec, JSON
        return 404, {"error": f"not faked: {method} {url.path}"}, JSON
