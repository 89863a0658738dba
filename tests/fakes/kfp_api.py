"""A loopback HTTP server speaking the KFP v2beta1 REST calls that kfp.Client makes to upload pipelines and
submit runs.

No Kubeflow Pipelines API server can run on this machine, so the upload/submit/schedule tests talk to this
stand-in through the real kfp.Client and real HTTP. It records every request and answers with the shapes
the real API returns (experiment_id, run_id, recurring_run_id, pipeline_id, pipeline_version_id, ...); an
upload must be a compiled package (a pipeline spec, optionally followed by its platform spec) and pipeline
names are unique, as the real API server requires.
"""

from __future__ import annotations

import email
import json
import uuid
from urllib.parse import parse_qs, urlparse

import yaml

from fakes.http import Handler, LoopbackServer


class FakeKfpApi:
    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.experiments: dict[str, dict] = {}
        self.runs: list[dict] = []
        self.recurring_runs: list[dict] = []
        self.pipelines: dict[str, dict] = {}
        self.versions: dict[str, list[dict]] = {}  # pipeline id -> versions (each with its uploaded package)
        api = self

        class KfpHandler(Handler):
            def do_GET(self):
                url = urlparse(self.path)
                query = parse_qs(url.query)
                api.requests.append({"method": "GET", "path": url.path, "query": query})
                if url.path.endswith("/healthz"):
                    return self.reply(200, {"multi_user": False})
                wanted = [p.get("stringValue", p.get("string_value")) for p in
                          json.loads(query.get("filter", ["{}"])[0]).get("predicates", [])]
                if url.path == "/apis/v2beta1/experiments":
                    found = [e for e in api.experiments.values() if e["display_name"] in wanted]
                    return self.reply(200, {"experiments": found, "total_size": len(found)})
                if url.path == "/apis/v2beta1/pipelines":
                    found = [p for p in api.pipelines.values() if not wanted or p["display_name"] in wanted]
                    return self.reply(200, {"pipelines": found, "total_size": len(found)})
                versions = url.path.removeprefix("/apis/v2beta1/pipelines/").removesuffix("/versions")
                if url.path.endswith("/versions") and versions in api.versions:
                    found = [{k: v for k, v in ver.items() if k != "package"} for ver in api.versions[versions]]
                    return self.reply(200, {"pipeline_versions": found, "total_size": len(found)})
                return self.reply(404, {"error": f"not faked: GET {url.path}"})

            def _upload(self) -> tuple[dict, dict, dict]:
                """(query, pipeline spec, platform spec) of an upload; 400 for anything but a package."""
                message = email.message_from_bytes(
                    f"Content-Type: {self.headers['Content-Type']}\r\n\r\n".encode() + self.body())
                parts = [p for p in message.walk() if p.get_param("name", header="content-disposition") == "uploadfile"]
                docs = [d for d in yaml.safe_load_all(parts[0].get_payload(decode=True)) if d] if parts else []
                if not docs or "pipelineInfo" not in docs[0]:
                    raise ValueError("the uploaded file is not a compiled pipeline package")
                return {k: v[0] for k, v in parse_qs(urlparse(self.path).query).items()}, docs[0], (
                    docs[1] if len(docs) > 1 else {})

            def do_POST(self):
                url = urlparse(self.path)
                if url.path in ("/apis/v2beta1/pipelines/upload", "/apis/v2beta1/pipelines/upload_version"):
                    try:
                        query, spec, platform = self._upload()
                    except ValueError as e:
                        return self.reply(400, {"error": str(e)})
                    api.requests.append({"method": "POST", "path": url.path, "query": query})
                    if url.path.endswith("/upload"):
                        if any(p["display_name"] == query["name"] for p in api.pipelines.values()):
                            return self.reply(409, {"error": f"pipeline {query['name']} already exists"})
                        pipeline = {"pipeline_id": uuid.uuid4().hex, "display_name": query["name"],
                                    "description": query.get("description", ""), "namespace": query.get("namespace", "")}
                        api.pipelines[pipeline["pipeline_id"]] = pipeline
                        api.versions[pipeline["pipeline_id"]] = []
                        pid, name = pipeline["pipeline_id"], query["name"]
                    else:
                        pid, name = query["pipelineid"], query["name"]
                        if pid not in api.pipelines:
                            return self.reply(404, {"error": f"no pipeline {pid}"})
                    version = {"pipeline_id": pid, "pipeline_version_id": uuid.uuid4().hex, "display_name": name,
                               "package": {"pipeline_spec": spec, "platform_spec": platform}}
                    api.versions[pid].append(version)
                    out = api.pipelines[pid] if url.path.endswith("/upload") else {
                        k: v for k, v in version.items() if k != "package"}
                    return self.reply(200, out)
                body = json.loads(self.body() or b"{}")
                api.requests.append({"method": "POST", "path": url.path, "body": body})
                if url.path == "/apis/v2beta1/experiments":
                    exp = {**body, "experiment_id": uuid.uuid4().hex}
                    api.experiments[exp["experiment_id"]] = exp
                    return self.reply(200, exp)
                if url.path == "/apis/v2beta1/runs":
                    run = {**body, "run_id": uuid.uuid4().hex, "state": "PENDING"}
                    api.runs.append(run)
                    return self.reply(200, run)
                if url.path == "/apis/v2beta1/recurringruns":
                    rec = {**body, "recurring_run_id": uuid.uuid4().hex, "status": "ENABLED"}
                    api.recurring_runs.append(rec)
                    return self.reply(200, rec)
                return self.reply(404, {"error": f"not faked: POST {url.path}"})

        self._server = LoopbackServer(KfpHandler)
        self.host = self._server.url

    def __enter__(self) -> "FakeKfpApi":
        self._server.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.stop()
