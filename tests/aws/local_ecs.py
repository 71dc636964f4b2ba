"""ECS on moto, plus the one thing moto cannot do: run the task's container.

moto's ECS accepts `run_task` (it validates the request, places the task on a registered
container instance and records overrides) but starts nothing. `LocalContainerECS` forwards
every call to the moto-backed boto3 client and, on `run_task`, runs the container's command
(task definition command, overridden by the container override, with the task definition's and
the override's environment) as a local process; its output goes to CloudWatch Logs on moto
under the `awslogs` group/stream ECS would use, and when it exits the task is stopped on moto,
so botocore's real `tasks_stopped` waiter sees it finish. Dagster's own tests of
`PipesECSClient` use the same approach.
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any


@dataclass
class _LocalContainer:
    process: subprocess.Popen
    cluster: str
    task_arn: str
    log_group: str
    log_stream: str
    done: threading.Event = field(default_factory=threading.Event)
    lines: list[str] = field(default_factory=list)


class LocalContainerECS:
    def __init__(self, ecs: Any, logs: Any, base_env: dict[str, str] | None = None) -> None:
        self.ecs = ecs
        self.logs = logs
        self.base_env = dict(os.environ if base_env is None else base_env)
        self.run_task_calls: list[dict[str, Any]] = []
        self.containers: dict[str, _LocalContainer] = {}

    @property
    def meta(self) -> Any:
        return self.ecs.meta

    def describe_task_definition(self, **kwargs: Any) -> dict[str, Any]:
        return self.ecs.describe_task_definition(**kwargs)

    def get_waiter(self, name: str) -> Any:
        return self.ecs.get_waiter(name)  # botocore's real waiter, polling moto

    def run_task(self, **kwargs: Any) -> dict[str, Any]:
        self.run_task_calls.append(copy.deepcopy(kwargs))
        response = self.ecs.run_task(**kwargs)
        if response.get("failures") or not response.get("tasks"):
            return response
        task = response["tasks"][0]
        definition = self.ecs.describe_task_definition(taskDefinition=task["taskDefinitionArn"])["taskDefinition"]
        (container,) = definition["containerDefinitions"]  # one essential container: the worker
        override = next(
            (o for o in kwargs.get("overrides", {}).get("containerOverrides", []) if o["name"] == container["name"]),
            {},
        )
        command = list(override.get("command") or container["command"])
        env = dict(self.base_env)
        env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")  # "python" = this venv
        env.update({e["name"]: e["value"] for e in container.get("environment", [])})
        env.update({e["name"]: e["value"] for e in override.get("environment", [])})
        options = container["logConfiguration"]["options"]
        task_id = task["taskArn"].rsplit("/", 1)[-1]
        stream = f"{options['awslogs-stream-prefix']}/{container['name']}/{task_id}"
        self._ensure_stream(options["awslogs-group"], stream)
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
        local = _LocalContainer(process, kwargs.get("cluster", "default"), task["taskArn"], options["awslogs-group"], stream)
        self.containers[task["taskArn"]] = local
        threading.Thread(target=self._pump, args=(local,), daemon=True).start()
        return response

    def describe_tasks(self, **kwargs: Any) -> dict[str, Any]:
        response = self.ecs.describe_tasks(**kwargs)
        for task in response.get("tasks", []):
            local = self.containers.get(task["taskArn"])
            if local is None or not local.done.is_set():
                continue
            for container in task.get("containers", []):
                container["exitCode"] = local.process.returncode
                container.setdefault("runtimeId", task["taskArn"].rsplit("/", 1)[-1])
        return response

    def stop_task(self, **kwargs: Any) -> dict[str, Any]:
        local = self.containers.get(kwargs["task"])
        if local is not None and local.process.poll() is None:
            local.process.terminate()
        return self.ecs.stop_task(**kwargs)

    def wait_all(self, timeout: float = 120.0) -> None:
        for local in self.containers.values():
            local.done.wait(timeout)

    # -- helpers -----------------------------------------------------------------------------

    def _ensure_stream(self, group: str, stream: str) -> None:
        try:
            self.logs.create_log_group(logGroupName=group)
        except self.logs.exceptions.ResourceAlreadyExistsException:
            pass
        self.logs.create_log_stream(logGroupName=group, logStreamName=stream)

    def _pump(self, local: _LocalContainer) -> None:
        """Ship each stdout/stderr line to CloudWatch as the awslogs driver does (each stream read
        on its own, line by line); when the process has exited, stop the task on moto."""
        assert local.process.stdout is not None and local.process.stderr is not None
        lock = threading.Lock()
        readers = [
            threading.Thread(target=self._ship, args=(local, pipe, lock), daemon=True)
            for pipe in (local.process.stdout, local.process.stderr)
        ]
        for reader in readers:
            reader.start()
        for reader in readers:
            reader.join()
        local.process.wait()
        local.done.set()  # before moto reports STOPPED, so describe_tasks can give the exit code
        self.ecs.stop_task(cluster=local.cluster, task=local.task_arn, reason="Essential container in task exited")

    def _ship(self, local: _LocalContainer, pipe: Any, lock: threading.Lock) -> None:
        for line in pipe:
            line = line.rstrip("\n")
            if not line:
                continue
            with lock:  # one writer at a time keeps event order = arrival order
                local.lines.append(line)
                self.logs.put_log_events(
                    logGroupName=local.log_group,
                    logStreamName=local.log_stream,
                    logEvents=[{"timestamp": int(time.time() * 1000), "message": line}],
                )
