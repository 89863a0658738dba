"""A loopback HTTP server speaking the few KFP v2beta1 REST calls that kfp.Client makes to submit runs.

No Kubeflow Pipelines API server can run on this machine, so the submit/schedule tests talk to this
stand-in through the real kfp.Client and real HTTP. It records every request and answers with the shapes
the real API returns (experiment_id, run_id, recurring_run_id, ...).
"""

from __future__ import annotations

import json
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse


class FakeKfpApi:
    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.experiments: dict[str, dict] = {}
        self.runs: list[dict] = []
        self.recurring_runs: list[dict] = []
        api = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output quiet
                pass

            def _reply(self, code: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _body(self) -> dict:
                n = int(self.headers.get("Content-Length") or 0)
                return json.loads(self.rfile.read(n) or b"{}")

            def do_GET(self):
                url = urlparse(self.path)
                api.requests.append({"method": "GET", "path": url.path, "query": parse_qs(url.query)})
                if url.path.endswith("/healthz"):
                    return self._reply(200, {"multi_user": False})
                if url.path == "/apis/v2beta1/experiments":
                    flt = parse_qs(url.query).get("filter", ["{}"])[0]
                    wanted = [p.get("stringValue", p.get("string_value")) for p in json.loads(flt).get("predicates", [])]
                    found = [e for e in api.experiments.values() if e["display_name"] in wanted]
                    return self._reply(200, {"experiments": found, "total_size": len(found)})
                return self._reply(404, {"error": f"not faked: GET {url.path}"})

            def do_POST(self):
                url = urlparse(self.path)
                body = self._body()
                api.requests.append({"method": "POST", "path": url.path, "body": body})
                if url.path == "/apis/v2beta1/experiments":
                    exp = {**body, "experiment_id": uuid.uuid4().hex}
                    api.experiments[exp["experiment_id"]] = exp
                    return self._reply(200, exp)
                if url.path == "/apis/v2beta1/runs":
                    run = {**body, "run_id": uuid.uuid4().hex, "state": "PENDING"}
                    api.runs.append(run)
                    return self._reply(200, run)
                if url.path == "/apis/v2beta1/recurringruns":
                    rec = {**body, "recurring_run_id": uuid.uuid4().hex, "status": "ENABLED"}
                    api.recurring_runs.append(rec)
                    return self._reply(200, rec)
                return self._reply(404, {"error": f"not faked: POST {url.path}"})

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.host = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> "FakeKfpApi":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
