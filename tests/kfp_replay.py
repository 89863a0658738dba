"""Run a *compiled* pipeline package the way Kubeflow Pipelines v2's backend does, with local processes.

No Kubeflow can run on this machine; kfp.local does not prove a package runs on a cluster (it ignores the
kubernetes platform section, keeps artifacts on local paths and passes the caller's environment on). This
harness replays what KFP's driver, Argo and KFP's launcher do for every task of the package's IR (read from
backend/src/v2/driver and backend/src/v2/component/launcher_v2.go of kubeflow/pipelines):

- the **driver** resolves the task's inputs (pipeline parameters, upstream outputs, constants with the
  ``{{$.pipeline_job_name}}``/``uuid``/``pipeline_task_name`` placeholders), evaluates ``triggerPolicy``
  conditions, provisions output artifact URIs under the pipeline root (``<root>/<pipeline>/<run id>/<task>/
  <output>``: ``minio://mlpipeline/v2/artifacts/...`` by default, or an ``s3://`` root), reuses cached
  outputs when the task allows caching and its cache key (parameters, input artifacts, command, image)
  matches an earlier execution, and builds the step **pod**: the IR's image, command, env and resources
  (requests/limits, accelerator), plus the kubernetes platform section's ``secretAsEnv``, ``nodeSelector``
  and ``tolerations``, and KFP's own ``KFP_POD_NAME``/``KFP_POD_UID``; the pod must validate against the
  core/v1 Pod schema and fit a node of the fake cluster;
- the **kubelet** resolves the pod's env from the namespace's Secrets in the fake cluster (a missing Secret or
  key fails the step as ``CreateContainerConfigError``); the step sees the service-account mount of its
  namespace and account (token, ca.crt, namespace) and ``KUBERNETES_SERVICE_HOST/PORT`` of the fake API;
- the **launcher** downloads input artifacts with its own object-store credentials into the local mirror
  (``/minio/<bucket>/<key>``, ``/s3/...``), creates the output folders, replaces ``{{$}}`` with the executor
  input JSON (protojson of ``ExecutorInput``, parameter defaults added), runs the IR's command
  (``sh -ec ... python3 -m kfp.dsl.executor_main --executor_input {{$}} --function_to_execute <fn>``) as its
  own process, reads the executor output and the output parameter files, and uploads every output artifact's
  local path (a missing path is skipped, as the launcher does).

The step process's environment holds only what the pod gets: the image's env (PATH, HOME, ...), the IR's
env, the resolved platform env, KFP's variables and the Kubernetes service variables.

Two ways to run a step: a **container** of the msenc image (``container=(docker client, image)``), with the
pod's paths mounted where a pod has them (``/minio``, ``/s3``, ``/gcs``, ``/tmp/kfp``, ``/tmp/kfp_outputs``,
the service-account mount) and the host's network (the loopback S3 server and API); or a local **process**
in this Python environment, where those absolute paths live under a per-pod directory, which
``pod_root/sitecustomize.py`` (on the step's PYTHONPATH, with ``MSENC_REPLAY_POD_ROOT``) maps kfp's and the
kubernetes client's constants to — the only stand-in of the process mode.
"""

from __future__ import annotations

import copy
import json
import re
import subprocess
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from fake_k8s import ContainerConfigError, FakeCluster, image_env, resolve_env

POD_ROOT_SHIM = Path(__file__).parent / "pod_root"
MOUNTS = {"minio://": "minio", "s3://": "s3", "gs://": "gcs"}
SERVICE_ACCOUNT_PATH = "var/run/secrets/kubernetes.io/serviceaccount"
# Variables of the stand-in for the pod's filesystem (not given by the platform, see the module docstring).
HARNESS_ENV = {"PYTHONPATH", "MSENC_REPLAY_POD_ROOT"}


class StepFailed(Exception):
    def __init__(self, task: str, reason: str, log: str = ""):
        super().__init__(f"step {task} failed: {reason}" + (f"\n--- its log (last 3000 characters) ---\n{log[-3000:]}"
                                                             if log else ""))
        self.task, self.reason, self.log = task, reason, log


@dataclass
class Artifact:
    name: str
    uri: str
    type: dict
    metadata: dict = field(default_factory=dict)


@dataclass
class TaskRun:
    name: str
    executor: str | None = None
    pod: dict | None = None
    env: dict[str, str] = field(default_factory=dict)
    executor_input: str = ""
    log: str = ""
    cached: bool = False
    skipped: bool = False
    parameters: dict[str, Any] = field(default_factory=dict)
    artifacts: dict[str, Artifact] = field(default_factory=dict)


@dataclass
class ReplayRun:
    run_id: str
    run_name: str
    pipeline_root: str
    tasks: dict[str, TaskRun]
    outputs: dict[str, Artifact]


def local_path(uri: str) -> str:
    """KFP's LocalPathForURI: the launcher's mirror of an artifact inside the pod."""
    for scheme, mount in MOUNTS.items():
        if uri.startswith(scheme):
            return f"/{mount}/{uri[len(scheme):]}"
    raise ValueError(f"failed to generate local path for URI {uri}: unsupported storage scheme")


class PipelineReplay:
    """One Kubeflow Pipelines installation: object store, fake cluster, namespace and step ServiceAccount."""

    def __init__(self, package: str | Path, *, cluster: FakeCluster, namespace: str, service_account: str,
                 object_store, workdir: Path, pipeline_root: str = "minio://mlpipeline/v2/artifacts",
                 timeout: float = 900, container: tuple[Any, str] | None = None):
        docs = [d for d in yaml.safe_load_all(Path(package).read_text()) if d]
        self.spec = docs[0]
        self.platform = ((docs[1] if len(docs) > 1 else {}).get("platforms", {}).get("kubernetes", {})
                         .get("deploymentSpec", {}).get("executors", {}))
        self.cluster, self.namespace, self.service_account = cluster, namespace, service_account
        self.store = object_store  # the launcher's own client (KFP's object-store credentials, not the pod's)
        self.workdir = workdir
        self.pipeline_root = pipeline_root.rstrip("/")
        self.timeout = timeout
        self.container = container  # (docker client, image) to run each step in the image
        self.cache: dict[str, TaskRun] = {}
        self._pods = 0

    # -------------------------------------------------------------------------------------------- runs
    def run(self, arguments: dict[str, Any] | None = None, run_name: str | None = None,
            enable_caching: bool | None = None) -> ReplayRun:
        root = self.spec["root"]
        params = {name: p.get("defaultValue") for name, p in root.get("inputDefinitions", {}).get("parameters", {}).items()}
        unknown = set(arguments or {}) - set(params)
        if unknown:
            raise ValueError(f"unknown pipeline parameters {sorted(unknown)}")
        params.update(arguments or {})
        run_id = str(uuid.uuid4())
        name = self.spec["pipelineInfo"]["name"]
        run = ReplayRun(run_id=run_id, run_name=run_name or f"{name}-{run_id[:8]}",
                        pipeline_root=f"{self.pipeline_root}/{name}/{run_id}", tasks={}, outputs={})
        scope = {"parameters": params, "artifacts": {}}
        self._dag(run, root["dag"], scope, enable_caching)
        for out_name, sel in root["dag"].get("outputs", {}).get("artifacts", {}).items():
            s = sel["artifactSelectors"][0]
            run.outputs[out_name] = run.tasks[s["producerSubtask"]].artifacts[s["outputArtifactKey"]]
        return run

    def _dag(self, run: ReplayRun, dag: dict, scope: dict, enable_caching: bool | None) -> None:
        tasks = dag["tasks"]
        done: set[str] = set()
        while len(done) < len(tasks):
            ready = [n for n, t in tasks.items() if n not in done and set(t.get("dependentTasks", [])) <= done]
            if not ready:
                raise ValueError(f"cycle or unknown dependency among {sorted(set(tasks) - done)}")
            for name in sorted(ready):
                self._task(run, name, tasks[name], scope, enable_caching)
                done.add(name)

    def _resolve(self, run: ReplayRun, task_name: str, task: dict, scope: dict) -> tuple[dict, dict]:
        params, artifacts = {}, {}
        for name, spec in task.get("inputs", {}).get("parameters", {}).items():
            if "componentInputParameter" in spec:
                params[name] = scope["parameters"][spec["componentInputParameter"]]
            elif "taskOutputParameter" in spec:
                src = spec["taskOutputParameter"]
                params[name] = run.tasks[src["producerTask"]].parameters[src["outputParameterKey"]]
            elif "runtimeValue" in spec:
                value = spec["runtimeValue"]["constant"]
                params[name] = {"{{$.pipeline_job_name}}": run.run_name, "{{$.pipeline_job_resource_name}}": run.run_name,
                                "{{$.pipeline_job_uuid}}": run.run_id,
                                "{{$.pipeline_task_name}}": task_name}.get(value, value) if isinstance(value, str) else value
            else:
                raise ValueError(f"{task_name}: parameter input {name} of kind {sorted(spec)} is not replayed")
        for name, spec in task.get("inputs", {}).get("artifacts", {}).items():
            if "taskOutputArtifact" in spec:
                src = spec["taskOutputArtifact"]
                artifacts[name] = run.tasks[src["producerTask"]].artifacts[src["outputArtifactKey"]]
            elif "componentInputArtifact" in spec:
                artifacts[name] = scope["artifacts"][spec["componentInputArtifact"]]
            else:
                raise ValueError(f"{task_name}: artifact input {name} of kind {sorted(spec)} is not replayed")
        return params, artifacts

    def _task(self, run: ReplayRun, name: str, task: dict, scope: dict, enable_caching: bool | None) -> None:
        params, artifacts = self._resolve(run, name, task, scope)
        condition = task.get("triggerPolicy", {}).get("condition")
        if condition and not _condition(condition, params):
            run.tasks[name] = TaskRun(name=name, skipped=True)
            return
        component = self.spec["components"][task["componentRef"]["name"]]
        if "dag" in component:  # a sub-DAG (dsl.If): its tasks see the resolved inputs as its parameters
            run.tasks[name] = TaskRun(name=name)
            self._dag(run, component["dag"], {"parameters": params, "artifacts": artifacts}, enable_caching)
            return
        executor = component["executorLabel"]
        caching = task.get("cachingOptions", {}).get("enableCache", False) if enable_caching is None else enable_caching
        container = self.spec["deploymentSpec"]["executors"][executor]["container"]
        key = json.dumps([container, sorted(params.items()), sorted((k, a.uri) for k, a in artifacts.items()),
                          component.get("outputDefinitions")], sort_keys=True, default=str)
        if caching and key in self.cache:
            cached = copy.deepcopy(self.cache[key])
            cached.name, cached.cached = name, True
            run.tasks[name] = cached
            return
        result = self._execute(run, name, component, executor, params, artifacts)
        run.tasks[name] = result
        if caching:
            self.cache[key] = result

    # --------------------------------------------------------------------------------- one step's pod
    def _pod(self, name: str, executor: str, container: dict) -> dict:
        """The step pod as the driver patches it (only what the package decides; KFP's launcher init
        container and Argo's wait container are left out)."""
        platform = self.platform.get(executor, {})
        env = [{"name": "KFP_POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
               {"name": "KFP_POD_UID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.uid"}}}]
        env += [{"name": e["name"], "value": e["value"]} for e in container.get("env", [])]
        for secret in platform.get("secretAsEnv", []):
            secret_name = secret.get("secretNameParameter", {}).get("runtimeValue", {}).get("constant") or secret["secretName"]
            for m in secret["keyToEnv"]:
                ref = {"name": secret_name, "key": m["secretKey"]}
                if "optional" in secret:
                    ref["optional"] = secret["optional"]
                env.append({"name": m["envVar"], "valueFrom": {"secretKeyRef": ref}})
        r = container.get("resources", {})
        resources: dict[str, dict[str, str]] = {"requests": {}, "limits": {}}
        for field_, (kind, res) in {"resourceCpuRequest": ("requests", "cpu"), "resourceCpuLimit": ("limits", "cpu"),
                                    "resourceMemoryRequest": ("requests", "memory"),
                                    "resourceMemoryLimit": ("limits", "memory")}.items():
            if field_ in r:
                resources[kind][res] = r[field_]
        if "accelerator" in r:
            acc = r["accelerator"]
            resources["limits"][acc.get("resourceType", acc.get("type"))] = str(acc.get("resourceCount", acc.get("count")))
        pod_name = f"{name}-{self._pods:04d}"[:63]
        self._pods += 1
        spec = {"serviceAccountName": self.service_account, "restartPolicy": "Never",
                "containers": [{"name": "main", "image": container["image"], "command": container["command"],
                                "args": container.get("args", []), "env": env,
                                "resources": {k: v for k, v in resources.items() if v}}]}
        if platform.get("nodeSelector", {}).get("labels"):
            spec["nodeSelector"] = dict(platform["nodeSelector"]["labels"])
        if platform.get("tolerations"):
            spec["tolerations"] = [{k: t[k] for k in ("key", "operator", "value", "effect") if t.get(k)}
                                   for t in platform["tolerations"]]
        return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": pod_name, "namespace": self.namespace},
                "spec": spec}

    def _execute(self, run: ReplayRun, name: str, component: dict, executor: str, params: dict,
                 artifacts: dict[str, Artifact]) -> TaskRun:
        import kubernetes_validate
        from google.protobuf import json_format, struct_pb2
        from kfp.pipeline_spec import pipeline_spec_pb2 as pb

        container = self.spec["deploymentSpec"]["executors"][executor]["container"]
        pod = self._pod(name, executor, container)
        kubernetes_validate.validate(pod, "1.30", strict=True)
        unschedulable = self.cluster._schedulable(pod["spec"])
        if unschedulable:
            raise StepFailed(name, f"pod stays Pending: {unschedulable}")
        if not self.cluster.get("ServiceAccount", self.namespace, self.service_account):
            raise StepFailed(name, f'serviceaccount "{self.service_account}" not found in {self.namespace}')
        pod_name = pod["metadata"]["name"]
        uid = self.cluster.add_pod(self.namespace, pod_name, {"pipeline/runid": run.run_id})
        pod_root = self.workdir / run.run_id[:8] / pod_name
        home = pod_root / "home"
        home.mkdir(parents=True)

        def inside(path: str) -> str:
            """An absolute path of the pod as the step sees it (the container has the real one)."""
            return path if self.container else str(pod_root / path.lstrip("/"))

        try:
            env = resolve_env(pod["spec"]["containers"][0]["env"], self.namespace, self.cluster.secrets(self.namespace),
                              {"metadata.name": pod_name, "metadata.uid": uid, "metadata.namespace": self.namespace})
        except ContainerConfigError as e:
            raise StepFailed(name, f"CreateContainerConfigError: {e}") from None
        env.update(self.cluster.service_account_mount(pod_root / SERVICE_ACCOUNT_PATH, self.namespace,
                                                      self.service_account))

        # the driver: the executor input (the launcher adds the parameter defaults)
        inputs_def = component.get("inputDefinitions", {})
        values = {k: p["defaultValue"] for k, p in inputs_def.get("parameters", {}).items() if "defaultValue" in p}
        values.update(params)
        outputs_def = component.get("outputDefinitions", {})
        task_root = f"{run.pipeline_root}/{name}"
        out_artifacts = {k: Artifact(name=k, uri=f"{task_root}/{k}", type=spec["artifactType"])
                         for k, spec in outputs_def.get("artifacts", {}).items()}

        def runtime(a: Artifact) -> pb.ArtifactList:
            meta = struct_pb2.Struct()
            meta.update(a.metadata)
            return pb.ArtifactList(artifacts=[pb.RuntimeArtifact(
                name=a.name, uri=a.uri, metadata=meta, type=pb.ArtifactTypeSchema(**{
                    "schema_title": a.type["schemaTitle"], "schema_version": a.type.get("schemaVersion", "")}))])

        executor_input = pb.ExecutorInput(
            inputs=pb.ExecutorInput.Inputs(
                parameter_values={k: json_format.ParseDict(v, struct_pb2.Value()) for k, v in values.items()},
                artifacts={k: runtime(a) for k, a in artifacts.items()}),
            outputs=pb.ExecutorInput.Outputs(
                parameters={k: pb.ExecutorInput.OutputParameter(output_file=inside(f"/tmp/kfp/outputs/{k}"))
                            for k in outputs_def.get("parameters", {})},
                artifacts={k: runtime(a) for k, a in out_artifacts.items()},
                output_file=inside("/tmp/kfp_outputs/output_metadata.json")))
        executor_json = json_format.MessageToJson(executor_input, indent=None)

        # the launcher: inputs down, output folders, placeholders, the user command, outputs up
        for a in artifacts.values():
            self._download(a.uri, pod_root / local_path(a.uri).lstrip("/"))
        for a in out_artifacts.values():
            (pod_root / local_path(a.uri).lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
        for folder in ("minio", "s3", "gcs", "tmp/kfp/outputs", "tmp/kfp_outputs"):
            (pod_root / folder).mkdir(parents=True, exist_ok=True)
        command = [a.replace("{{$}}", executor_json) for a in container["command"] + container.get("args", [])]
        pod_env = {"KUBERNETES_SERVICE_HOST": env.pop("KUBERNETES_SERVICE_HOST"),
                   "KUBERNETES_SERVICE_PORT": env.pop("KUBERNETES_SERVICE_PORT"), "HOSTNAME": pod_name, **env}
        try:
            if self.container:
                result = TaskRun(name=name, executor=executor, pod=pod, env=pod_env, executor_input=executor_json)
                code, result.log = self._run_container(command, pod_env, pod_root)
            else:
                full_env = {**image_env(home), **pod_env, "PYTHONPATH": str(POD_ROOT_SHIM),
                            "MSENC_REPLAY_POD_ROOT": str(pod_root)}
                result = TaskRun(name=name, executor=executor, pod=pod, env=full_env, executor_input=executor_json)
                proc = subprocess.run(command, env=full_env, cwd=home, capture_output=True, text=True,
                                      timeout=self.timeout)
                code, result.log = proc.returncode, proc.stdout + proc.stderr
        finally:
            self.cluster.delete_pod(self.namespace, pod_name)  # Argo's pod GC: dependents (a job) go with it
        if code != 0:
            raise StepFailed(name, f"exit code {code}", result.log)
        output_file = pod_root / "tmp/kfp_outputs/output_metadata.json"
        executor_output = json.loads(output_file.read_text()) if output_file.exists() else {}
        for k in outputs_def.get("parameters", {}):
            if k in executor_output.get("parameterValues", {}):
                result.parameters[k] = executor_output["parameterValues"][k]
            else:
                text = (pod_root / "tmp/kfp/outputs" / k).read_text()
                result.parameters[k] = _typed(text, outputs_def["parameters"][k]["parameterType"])
        for k, a in out_artifacts.items():
            produced = executor_output.get("artifacts", {}).get(k, {}).get("artifacts", [{}])[0]
            a.metadata.update(produced.get("metadata", {}))
            a.uri = produced.get("uri") or a.uri
            self._upload(pod_root / local_path(a.uri).lstrip("/"), a.uri)
            result.artifacts[k] = a
        return result

    def _run_container(self, command: list[str], env: dict[str, str], pod_root: Path) -> tuple[int, str]:
        """The step in the msenc image (its own user, PATH and venv), the pod's folders mounted at their paths."""
        client, image = self.container
        for path in [pod_root, *pod_root.rglob("*")]:  # the image's non-root user writes the pod's folders
            if path.is_dir():
                path.chmod(0o777)
        mounts = {str(pod_root / d): {"bind": f"/{d}", "mode": "rw"}
                  for d in ("minio", "s3", "gcs", "tmp/kfp", "tmp/kfp_outputs")}
        mounts[str(pod_root / SERVICE_ACCOUNT_PATH)] = {"bind": f"/{SERVICE_ACCOUNT_PATH}", "mode": "ro"}
        box = client.containers.run(image, command, environment=env, volumes=mounts, network_mode="host",
                                    detach=True)
        try:
            code = int(box.wait(timeout=self.timeout)["StatusCode"])
            return code, box.logs().decode(errors="replace")
        finally:
            box.remove(force=True)

    # ------------------------------------------------------------------------ the launcher's object store
    def _bucket_key(self, uri: str) -> tuple[str, str]:
        scheme = next(s for s in MOUNTS if uri.startswith(s))
        bucket, _, key = uri[len(scheme):].partition("/")
        return bucket, key

    def _download(self, uri: str, dest: Path) -> None:
        bucket, key = self._bucket_key(uri)
        keys = [o["Key"] for page in self.store.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=key)
                for o in page.get("Contents", [])]
        if key in keys:  # one object
            dest.parent.mkdir(parents=True, exist_ok=True)
            self.store.download_file(bucket, key, str(dest))
            return
        for k in keys:
            if k.startswith(key.rstrip("/") + "/"):
                target = dest / k[len(key.rstrip("/")) + 1:]
                target.parent.mkdir(parents=True, exist_ok=True)
                self.store.download_file(bucket, k, str(target))

    def _upload(self, src: Path, uri: str) -> None:
        if not src.exists():  # "We allow components to not produce output files"
            return
        bucket, key = self._bucket_key(uri)
        if src.is_file():
            self.store.upload_file(str(src), bucket, key)
            return
        for path in sorted(p for p in src.rglob("*") if p.is_file()):
            self.store.upload_file(str(path), bucket, f"{key.rstrip('/')}/{path.relative_to(src).as_posix()}")


def _typed(text: str, kind: str) -> Any:
    return {"NUMBER_INTEGER": int, "NUMBER_DOUBLE": float, "BOOLEAN": lambda t: t.strip().lower() == "true",
            "STRING": str}.get(kind, json.loads)(text)


_CONDITION = re.compile(r"^inputs\.parameter_values\['([^']+)'\]\s*(==|!=)\s*(.+)$")


def _condition(expression: str, params: dict[str, Any]) -> bool:
    """The CEL conditions the KFP compiler writes for ``dsl.If(param == / != constant)``; anything else fails."""
    m = _CONDITION.match(expression.strip())
    if not m:
        raise ValueError(f"condition {expression!r} is not one the replay evaluates")
    name, op, literal = m.groups()
    value = json.loads(literal.replace("'", '"')) if literal.strip().startswith(("'", '"')) else json.loads(literal)
    return (params[name] == value) == (op == "==")
