#!/usr/bin/env python3
"""A strict local stand-in for the parts of Azure pool-agent talks to, for tests.

IMDS (instance metadata, managed identity tokens), Azure Monitor custom
metrics ingestion, Key Vault secrets and ARM's storage account listKeys, on
one loopback port. It refuses what Azure refuses:
IMDS requests without `Metadata: true`, with `X-Forwarded-For`, without a
known `api-version`, or more than 5 in a second; tokens for an unknown
audience or another client id; metric posts without a live token of the
monitoring audience, with a body whose dimValues do not match dimNames, or a
time outside 20 minutes back and 5 minutes ahead; Key Vault reads without a
live token of the vault audience (401 with a challenge, as Key Vault does) or
of an unknown api-version; listKeys that is not a POST, lacks a management
token, names another subscription or resource group, or an unknown account.

Faults are injected and requests read back through /_fake/* routes:
  POST /_fake/fault   {"path": prefix, "status": 410, "seconds": 60 | "count": 3,
                       "retry_after": 3, "delay": 6, "drop": true, "body": {...}, "method": "PUT",
                       "after": true (the request is applied first, then its answer replaced:
                       dropped, delayed or given that status)}
  POST /_fake/config  {"token_lifetime": 90, "client_id": "...", "compute": {...},
                       "secrets": {"name": "value"}, "storage_keys": {"account": ["key1", "key2"]},
                       "forbidden": ["/secrets/"], "instances": {"3": {...}},
                       "scheduled_events": {"DocumentIncarnation": 2, "Events": [...]}}
  GET  /_fake/instance_writes  protection writes that changed an instance
  GET  /_fake/approvals        Scheduled Events approvals
  GET  /_fake/deletes          scale set deletes accepted (202)
  GET  /_fake/scale_set_writes PATCHes of the scale set that were applied (tags)
One fake can be five VMs of one scale set: IMDS under /vm/<instance id>/metadata/...
answers as that instance (its name pool_<id>, vmId, resourceId, its own IMDS rate limit).
The scale set has an etag that changes at every write; a PATCH with If-Match
that does not match is refused 412 PreconditionFailed; a delete lowers the
capacity at once, answers 202 with an operation to poll (scale_set.delete_seconds,
default 2, then scale_set.delete_outcome, default "Succeeded"), and the
instance is gone when the operation succeeds.
  GET  /_fake/requests  every request: time, method, path, query, status
  GET  /_fake/points    every accepted metric point
  GET  /_fake/violations  IMDS rate limit breaches seen
Usage: fake_azure.py [PORT [CONFIG.json]] (CONFIG holds what /_fake/config takes);
FAKE_AZURE_HOST binds another address than 127.0.0.1.
Prints "PORT <n>" on its first line; stops on SIGTERM.
"""
import json
import os
import signal
import sys
import threading
import time
import uuid
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

AUDIENCES = {"https://monitoring.azure.com/", "https://management.azure.com/", "https://vault.azure.net"}
VAULT_VERSIONS = {"7.0", "7.1", "7.2", "7.3", "7.4", "7.5"}
COMPUTE_VERSIONS = {"2023-09-01", "2024-03-01", "2024-07-01", "2024-11-01"}
# Compute's budget for writes to one instance: a burst of 12, then 4 a minute.
WRITE_BURST, WRITES_PER_MINUTE = 12, 4
STORAGE_VERSIONS = {"2022-09-01", "2023-01-01", "2023-05-01", "2024-01-01"}
IMDS_VERSIONS = {"2018-02-01", "2019-08-01", "2020-07-01", "2019-08-15", "2020-09-01", "2021-01-01", "2021-02-01", "2021-05-01", "2023-07-01"}
MAX_BACK, MAX_AHEAD = 20 * 60, 5 * 60

lock = threading.Lock()
state = {
    "compute": {
        "name": "pool_3",
        "vmId": "0f5c3a52-7d1e-4c7c-9b1a-6d2f00000003",
        "location": "westeurope",
        "subscriptionId": "11111111-2222-3333-4444-555555555555",
        "resourceGroupName": "rg-pool",
        "vmScaleSetName": "pool",
        "resourceId": "/subscriptions/11111111-2222-3333-4444-555555555555/resourceGroups/rg-pool/providers/Microsoft.Compute/virtualMachineScaleSets/pool/virtualMachines/3",
        "userData": "",
    },
    "token_lifetime": 3600,
    "secrets": {},
    "storage_keys": {},
    "forbidden": [],
    # Scale set instances by instance id: protection, and the writes each got.
    "instances": {"3": {"protectFromScaleIn": False, "protectFromScaleSetActions": False}},
    "instance_writes": [],
    # Scheduled Events: the document served, and the approvals received.
    "scheduled_events": {"DocumentIncarnation": 0, "Events": []},
    "approvals": [],
    # The scale set: its capacity and state, and the deletes it was asked for.
    "scale_set": {"capacity": 3, "provisioningState": "Succeeded", "terminateNotification": True},
    "scale_set_etag": 1,
    "scale_set_tags": {},
    "scale_set_writes": [],
    "deletes": [],
    "operations": {},
    "write_tokens": {},
    "client_id": None,
    "tokens": {},
    "faults": [],
    "requests": [],
    "points": [],
    "imds_times": [],
    "violations": [],
}


def now():
    return time.time()


def take_fault(path, method):
    """The first fault whose path prefix (and method, if it names one) matches and that still applies."""
    with lock:
        for fault in state["faults"]:
            if not path.startswith(fault["path"]) or fault.get("method", method) != method:
                continue
            if "until" in fault and now() > fault["until"]:
                continue
            if "count" in fault:
                if fault["count"] <= 0:
                    continue
                fault["count"] -= 1
            return fault
    return None


def settle_operations():
    """Delete operations end on their own time, polled or not (as Azure's do)."""
    with lock:
        for op in state["operations"].values():
            if op.get("finished") or now() < op["started"] + op["seconds"]:
                continue
            op["finished"] = True
            if op["outcome"] == "Succeeded":
                for i in op["instanceIds"]:
                    state["instances"].pop(i, None)
            else:
                state["scale_set"]["capacity"] += len(op["instanceIds"])
                state["scale_set_etag"] += 1


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    _lose = None

    def reply(self, status, body=None, headers=None):
        lose, self._lose = self._lose, None
        if lose and lose.get("delay"):
            time.sleep(lose["delay"])
        if lose and lose.get("drop"):
            self.close_connection = True
            self.connection.shutdown(2)
            return
        if lose and lose.get("status"):
            status, body, headers = lose["status"], lose.get("body") or {"error": "injected"}, {}
        data = b"" if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, str(value))
        self.end_headers()
        self.wfile.write(data)
        url = urlparse(self.path)
        with lock:
            state["requests"].append({
                "time": now(), "method": self.command, "path": url.path,
                "query": parse_qs(url.query), "status": status,
            })

    def body(self):
        """The request's body, read once when the request arrives (see route)."""
        return self._body

    def do_GET(self):
        self.route("GET")

    def do_POST(self):
        self.route("POST")

    def do_PUT(self):
        self.route("PUT")

    def do_PATCH(self):
        self.route("PATCH")

    def route(self, method):
        # Read the body before any answer: one left unread on a kept-alive
        # connection would be taken for the next request's first line.
        length = int(self.headers.get("Content-Length") or 0)
        self._body = self.rfile.read(length) if length else b""
        url = urlparse(self.path)
        path, query = url.path, parse_qs(url.query)
        if path.startswith("/_fake/"):
            return self.control(method, path)
        # /vm/<id>/metadata/...: IMDS as scale set instance <id> (one fake, many VMs).
        self.vm = None
        if path.startswith("/vm/"):
            parts = path.split("/", 3)
            if len(parts) == 4 and parts[3].startswith("metadata/"):
                self.vm, path = parts[2], "/" + parts[3]
        settle_operations()
        fault = take_fault(path, method)
        if fault and fault.get("after"):
            # Applied, then the answer is lost (a reset, a timeout, a 5xx from
            # the front door): the handler runs and its reply is replaced.
            self._lose = fault
            fault = None
        if fault:
            if fault.get("delay"):
                time.sleep(fault["delay"])
            if fault.get("drop"):
                self.close_connection = True
                self.connection.shutdown(2)
                return
            if fault.get("status"):
                headers = {"Retry-After": fault["retry_after"]} if fault.get("retry_after") else {}
                self.body()
                return self.reply(fault["status"], fault.get("body") or {"error": "injected"}, headers)
        if path.startswith("/metadata/"):
            return self.imds(method, path, query)
        if path.endswith("/metrics") and method == "POST":
            return self.metrics(path)
        if path.startswith("/secrets/"):
            return self.vault(method, path, query)
        if path.lower().endswith("/listkeys"):
            return self.list_keys(method, path, query)
        if "/providers/Microsoft.Compute/locations/" in path and "/operations/" in path:
            return self.operation(method, path, query)
        if "/virtualMachineScaleSets/" in path and "/virtualMachines/" in path:
            return self.instance(method, path, query)
        if "/virtualMachineScaleSets/" in path:
            return self.scale_set(method, path, query)
        return self.reply(404, {"error": "NotFound"})

    def bearer(self, audience):
        """The live token of `audience` this request carries, else None."""
        auth = self.headers.get("Authorization") or ""
        token = auth[len("Bearer "):] if auth.startswith("Bearer ") else None
        with lock:
            issued = state["tokens"].get(token)
        if not issued or issued["audience"] != audience or issued["expires"] < now():
            return None
        return token

    def forbidden(self, path):
        with lock:
            return any(path.startswith(prefix) for prefix in state["forbidden"])

    def vault(self, method, path, query):
        version = (query.get("api-version") or [None])[0]
        if version not in VAULT_VERSIONS:
            return self.reply(400, {"error": {"code": "BadParameter", "message": "The specified version is not supported"}})
        if method != "GET":
            return self.reply(405, {"error": {"code": "MethodNotAllowed"}})
        if not self.bearer("https://vault.azure.net"):
            challenge = 'Bearer authorization="https://login.microsoftonline.com/tenant", resource="https://vault.azure.net"'
            return self.reply(401, {"error": {"code": "Unauthorized", "message": "AKV10000: Request is missing a Bearer or PoP token."}},
                              {"WWW-Authenticate": challenge})
        if self.forbidden(path):
            return self.reply(403, {"error": {"code": "Forbidden", "message": "Caller is not authorized to perform action on resource."}})
        parts = path.split("/")
        name = parts[2] if len(parts) > 2 else ""
        with lock:
            value = state["secrets"].get(name)
        if value is None:
            return self.reply(404, {"error": {"code": "SecretNotFound", "message": f"A secret with (name/id) {name} was not found in this key vault."}})
        return self.reply(200, {"value": value, "id": f"https://fake.vault.azure.net/secrets/{name}/0001",
                                "attributes": {"enabled": True}})

    def scheduled_events(self, method, query):
        if (query.get("api-version") or [None])[0] not in ("2019-08-01", "2020-07-01"):
            return self.reply(400, {"error": "Bad request. api-version is invalid for scheduled events"})
        if method == "GET":
            with lock:
                document = json.loads(json.dumps(state["scheduled_events"]))
            return self.reply(200, document)
        try:
            requests = json.loads(self.body())["StartRequests"]
            ids = [r["EventId"] for r in requests]
        except (KeyError, ValueError, TypeError) as err:
            return self.reply(400, {"error": f"Bad request: {err}"})
        with lock:
            known = {e["EventId"]: e for e in state["scheduled_events"]["Events"]}
            # Azure takes an approval only for a scheduled event it knows.
            if any(i not in known or known[i]["EventStatus"] != "Scheduled" for i in ids):
                bad = True
            else:
                bad = False
                state["approvals"].append({"time": now(), "ids": ids})
        if bad:
            return self.reply(400, {"error": "Bad request: unknown or already started event"})
        return self.reply(200, b"")

    def arm_refusal(self, path, query, versions):
        """What ARM answers before looking at the resource: (status, body), or None."""
        version = (query.get("api-version") or [None])[0]
        if version not in versions:
            return 400, {"error": {"code": "InvalidApiVersionParameter", "message": f"api-version {version} is not supported"}}
        if not self.bearer("https://management.azure.com/"):
            return 401, {"error": {"code": "AuthenticationFailed", "message": "missing, expired or of another audience"}}
        if self.forbidden(path):
            return 403, {"error": {"code": "AuthorizationFailed", "message": f"the client has no authorization to perform this action on {path}"}}
        return None

    def identity(self):
        """IMDS compute of the VM asking: the configured one, or instance <id> of /vm/<id>."""
        with lock:
            compute = dict(state["compute"])
        if self.vm is not None:
            base = compute["resourceId"].rsplit("/", 1)[0]
            compute.update({"name": f"{compute['vmScaleSetName']}_{self.vm}", "resourceId": f"{base}/{self.vm}",
                            "vmId": f"0f5c3a52-7d1e-4c7c-9b1a-{int(self.vm):012d}"})
        return compute

    def scale_set_model(self, compute):
        """The scale set as ARM's GET shows it; call with the lock held."""
        scale_set = state["scale_set"]
        return {"name": compute["vmScaleSetName"], "location": compute["location"],
                "etag": f'"{state["scale_set_etag"]}"', "tags": dict(state["scale_set_tags"]),
                "sku": {"name": "Standard_D4s_v5", "tier": "Standard", "capacity": scale_set["capacity"]},
                "properties": {"provisioningState": scale_set["provisioningState"],
                               "orchestrationMode": "Uniform",
                               "virtualMachineProfile": {"scheduledEventsProfile": {
                                   "terminateNotificationProfile": {
                                       "enable": scale_set.get("terminateNotification", True),
                                       "notBeforeTimeout": "PT10M"}}}}}

    def scale_set(self, method, path, query):
        """GET or PATCH the scale set, or POST …/delete with {"instanceIds": [...]}."""
        data = self.body() if method in ("POST", "PATCH") else b""
        refused = self.arm_refusal(path, query, COMPUTE_VERSIONS)
        if refused:
            return self.reply(*refused)
        parts = path.split("/")
        with lock:
            compute = dict(state["compute"])
        if len(parts) < 9 or parts[2] != compute["subscriptionId"] or parts[8] != compute["vmScaleSetName"] \
                or parts[4].lower() != compute["resourceGroupName"].lower():
            return self.reply(404, {"error": {"code": "ResourceNotFound", "message": "scale set not found"}})
        if len(parts) == 9 and method == "GET":
            with lock:
                model = self.scale_set_model(compute)
            return self.reply(200, model)
        if len(parts) == 9 and method == "PATCH":
            return self.patch_scale_set(compute, data)
        if len(parts) == 10 and parts[9] == "delete" and method == "POST":
            try:
                ids = json.loads(data)["instanceIds"]
                assert isinstance(ids, list) and ids
            except (KeyError, ValueError, TypeError, AssertionError):
                return self.reply(400, {"error": {"code": "InvalidRequestContent", "message": "instanceIds is required"}})
            operation = uuid.uuid4().hex
            with lock:
                # ARM's text for an instance id the scale set does not have:
                # https://github.com/Azure/azure-cli/issues/25476, https://github.com/microsoft/onefuzz/issues/2547
                unknown = [i for i in ids if i not in state["instances"]]
                if not unknown:
                    state["deletes"].append({"time": now(), "instanceIds": ids})
                    state["scale_set"]["capacity"] -= len(ids)
                    state["scale_set_etag"] += 1
                    state["operations"][operation] = {
                        "started": now(), "instanceIds": ids,
                        "seconds": state["scale_set"].get("delete_seconds", 2),
                        "outcome": state["scale_set"].get("delete_outcome", "Succeeded")}
            if unknown:
                return self.reply(400, {"error": {"code": "InvalidParameter", "target": "instanceIds",
                                                  "message": f"The provided instanceId {unknown[0]} is not an active Virtual Machine Scale Set VM instanceId."}})
            # Azure's long-running operation: poll Azure-AsyncOperation (or Location), after Retry-After.
            # https://learn.microsoft.com/en-us/azure/azure-resource-manager/management/async-operations
            host = self.headers.get("Host") or "127.0.0.1"
            base = f"http://{host}/subscriptions/{compute['subscriptionId']}/providers/Microsoft.Compute/locations/{compute['location']}/operations/{operation}"
            version = (query.get("api-version") or [""])[0]
            return self.reply(202, b"", {"Azure-AsyncOperation": f"{base}?api-version={version}",
                                         "Location": f"{base}?monitor=true&api-version={version}",
                                         "Retry-After": 1})
        return self.reply(405, {"error": {"code": "MethodNotAllowed"}})

    def patch_scale_set(self, compute, data):
        """A PATCH (only tags are modelled), honouring If-Match against the scale set's etag."""
        try:
            doc = json.loads(data)
            assert isinstance(doc, dict)
            tags = doc.get("tags")
            if tags is not None and not (isinstance(tags, dict) and all(
                    isinstance(k, str) and isinstance(v, str) and len(k) <= 512 and len(v) <= 256 for k, v in tags.items())):
                raise ValueError("tags must map names to strings (names up to 512, values up to 256 characters)")
        except (ValueError, TypeError, AssertionError) as err:
            return self.reply(400, {"error": {"code": "InvalidRequestContent", "message": f"malformed: {err}"}})
        if_match = self.headers.get("If-Match")
        with lock:
            current = f'"{state["scale_set_etag"]}"'
            if if_match is not None and if_match != "*" and if_match != current:
                mismatch = True
            else:
                mismatch = False
                if tags is not None:
                    # Tags replace as a whole: read-modify-write is the caller's.
                    state["scale_set_tags"] = dict(tags)
                state["scale_set_etag"] += 1
                state["scale_set_writes"].append({"time": now(), "body": doc, "if_match": if_match})
                model = self.scale_set_model(compute)
        if mismatch:
            # ARM's answer to a stale If-Match, as seen from real scale sets:
            # https://github.com/kubernetes-sigs/cloud-provider-azure/issues/9728
            return self.reply(412, {"error": {"code": "PreconditionFailed",
                                              "message": f"Etag provided in if-match header {if_match} does not match etag {current} of resource."}})
        return self.reply(200, model)

    def operation(self, method, path, query):
        """A delete's long-running operation: InProgress, then its outcome (the instances gone on success)."""
        refused = self.arm_refusal(path, query, COMPUTE_VERSIONS)
        if refused:
            return self.reply(*refused)
        if method != "GET":
            return self.reply(405, {"error": {"code": "MethodNotAllowed"}})
        operation_id = path.rsplit("/", 1)[-1]
        with lock:
            op = state["operations"].get(operation_id)
            done = op is not None and op.get("finished", False)
            outcome = op["outcome"] if op else None
        if op is None:
            return self.reply(404, {"error": {"code": "NotFound", "message": "operation not found"}})
        monitor = (query.get("monitor") or [""])[0] == "true"
        if not done:
            return self.reply(202, b"", {"Retry-After": 1}) if monitor else \
                self.reply(200, {"name": operation_id, "status": "InProgress"}, {"Retry-After": 1})
        if outcome == "Succeeded":
            return self.reply(200, b"") if monitor else self.reply(200, {"name": operation_id, "status": "Succeeded"})
        error = {"code": "InternalExecutionError", "message": "An internal execution error occurred."}
        return self.reply(500, {"error": error}) if monitor else \
            self.reply(200, {"name": operation_id, "status": outcome, "error": error})

    def instance(self, method, path, query):
        """GET or PUT a scale set instance (only its protection policy is modelled)."""
        data = self.body() if method == "PUT" else b""
        refused = self.arm_refusal(path, query, COMPUTE_VERSIONS)
        if refused:
            return self.reply(*refused)
        parts = path.split("/")
        with lock:
            compute = dict(state["compute"])
        shape = (len(parts) == 11 and parts[1].lower() == "subscriptions" and parts[3].lower() == "resourcegroups"
                 and parts[6].lower() == "microsoft.compute" and parts[7].lower() == "virtualmachinescalesets"
                 and parts[9].lower() == "virtualmachines")
        if not shape or parts[2] != compute["subscriptionId"] or parts[4].lower() != compute["resourceGroupName"].lower() \
                or parts[8] != compute["vmScaleSetName"]:
            return self.reply(404, {"error": {"code": "ResourceNotFound", "message": "scale set not found"}})
        instance_id = parts[10]
        with lock:
            known = state["instances"].get(instance_id)
        if known is None:
            # A deleted instance, as ARM answers it: a GET gets ARM's
            # ResourceNotFound (https://github.com/Azure/azure-cli/issues/15064
            # shows its text); a PUT gets Compute's 400 InvalidParameter
            # (https://github.com/microsoft/onefuzz/issues/2547).
            if method == "PUT":
                return self.reply(400, {"error": {"code": "InvalidParameter", "target": "instanceIds",
                                                  "message": f"The provided instanceId {instance_id} is not an active Virtual Machine Scale Set VM instanceId."}})
            return self.reply(404, {"error": {"code": "ResourceNotFound",
                                              "message": f"The Resource 'Microsoft.Compute/virtualMachineScaleSets/{parts[8]}/virtualMachines/{instance_id}' under resource group '{parts[4]}' was not found. For more details please go to https://aka.ms/ARMResourceNotFoundFix"}})
        if method == "PUT":
            try:
                doc = json.loads(data)
                policy = doc["properties"]["protectionPolicy"]
                if doc["location"] != compute["location"]:
                    return self.reply(400, {"error": {"code": "LocationRequired", "message": "location does not match the scale set's"}})
                if not isinstance(policy["protectFromScaleIn"], bool) or not isinstance(policy.get("protectFromScaleSetActions", False), bool):
                    raise ValueError("protection flags must be booleans")
            except (KeyError, ValueError, TypeError) as err:
                return self.reply(400, {"error": {"code": "InvalidRequestContent", "message": f"malformed: {err}"}})
            t = now()
            with lock:
                bucket = state["write_tokens"].setdefault(instance_id, {"tokens": WRITE_BURST, "at": t})
                bucket["tokens"] = min(WRITE_BURST, bucket["tokens"] + (t - bucket["at"]) * WRITES_PER_MINUTE / 60)
                bucket["at"] = t
                if bucket["tokens"] < 1:
                    wait = int((1 - bucket["tokens"]) * 60 / WRITES_PER_MINUTE) + 1
                    throttled = True
                else:
                    bucket["tokens"] -= 1
                    throttled = False
                    known.update({"protectFromScaleIn": policy["protectFromScaleIn"],
                                  "protectFromScaleSetActions": policy.get("protectFromScaleSetActions", False)})
                    state["instance_writes"].append({"time": t, "instance": instance_id, "body": doc})
            if throttled:
                return self.reply(429, {"error": {"code": "OperationNotAllowed", "message": "too many requests for this instance"}},
                                  {"Retry-After": wait})
        with lock:
            policy = dict(state["instances"][instance_id])
        return self.reply(200, {"name": f"{compute['vmScaleSetName']}_{instance_id}", "instanceId": instance_id,
                                "location": compute["location"],
                                "properties": {"protectionPolicy": policy, "provisioningState": "Succeeded"}})

    def list_keys(self, method, path, query):
        if method != "POST":
            return self.reply(405, {"error": {"code": "MethodNotAllowed"}})
        self.body()
        refused = self.arm_refusal(path, query, STORAGE_VERSIONS)
        if refused:
            return self.reply(*refused)
        parts = path.split("/")
        with lock:
            compute = dict(state["compute"])
            accounts = dict(state["storage_keys"])
        shape = (len(parts) == 10 and parts[1].lower() == "subscriptions" and parts[3].lower() == "resourcegroups"
                 and parts[6].lower() == "microsoft.storage" and parts[7].lower() == "storageaccounts")
        if not shape:
            return self.reply(400, {"error": {"code": "InvalidResourceId"}})
        if parts[2] != compute["subscriptionId"] or parts[4].lower() != compute["resourceGroupName"].lower() \
                or parts[8] not in accounts:
            return self.reply(404, {"error": {"code": "ResourceNotFound", "message": f"storage account {parts[8]} not found"}})
        keys = [{"keyName": f"key{i + 1}", "value": value, "permissions": "FULL"}
                for i, value in enumerate(accounts[parts[8]])]
        return self.reply(200, {"keys": keys})

    def imds(self, method, path, query):
        t = now()
        # IMDS's limit is per VM: each /vm/<id> identity has its own.
        times_key = "imds_times" if self.vm is None else f"imds_times_{self.vm}"
        with lock:
            recent = [x for x in state.get(times_key, []) if t - x < 1.0]
            recent.append(t)
            state[times_key] = recent
            if len(recent) > 5:
                state["violations"].append({"time": t, "in_last_second": len(recent)})
                too_many = True
            else:
                too_many = False
        if self.headers.get("Metadata") != "true":
            return self.reply(400, {"error": "Bad request. Required metadata header not specified"})
        if self.headers.get("X-Forwarded-For"):
            return self.reply(400, {"error": "Bad request. X-Forwarded-For header is not allowed"})
        version = (query.get("api-version") or [None])[0]
        if version not in IMDS_VERSIONS:
            return self.reply(400, {"error": "Bad request. api-version is invalid or was not specified"})
        if too_many:
            return self.reply(429, {"error": "Too many requests"})
        if path == "/metadata/instance" and method == "GET":
            return self.reply(200, {"compute": self.identity(), "network": {}})
        if path == "/metadata/scheduledevents":
            return self.scheduled_events(method, query)
        if path == "/metadata/identity/oauth2/token" and method == "GET":
            resource = (query.get("resource") or [None])[0]
            if resource not in AUDIENCES:
                return self.reply(400, {"error": "invalid_resource", "error_description": f"unknown resource {resource}"})
            client_id = (query.get("client_id") or [None])[0]
            with lock:
                wanted = state["client_id"]
                lifetime = state["token_lifetime"]
            if wanted and client_id != wanted:
                return self.reply(400, {"error": "invalid_request", "error_description": "Identity not found"})
            token = "fake." + uuid.uuid4().hex
            expires = now() + lifetime
            with lock:
                state["tokens"][token] = {"audience": resource, "expires": expires, "client_id": client_id}
            return self.reply(200, {
                "access_token": token, "expires_in": str(lifetime), "expires_on": str(int(expires)),
                "resource": resource, "token_type": "Bearer",
            })
        return self.reply(404, {"error": "NotFound"})

    def metrics(self, path):
        data = self.body()
        auth = self.headers.get("Authorization") or ""
        token = auth[len("Bearer "):] if auth.startswith("Bearer ") else None
        with lock:
            issued = state["tokens"].get(token)
        if not issued or issued["audience"] != "https://monitoring.azure.com/" or issued["expires"] < now():
            return self.reply(401, {"error": {"code": "InvalidToken", "message": "missing, expired or of another audience"}})
        kind = (self.headers.get("Content-Type") or "").split(";")[0].strip()
        if kind not in ("application/json", "application/x-ndjson"):
            return self.reply(415, {"error": {"code": "UnsupportedMediaType"}})
        lines = [l for l in data.decode().splitlines() if l.strip()] if kind == "application/x-ndjson" else [data.decode()]
        points = []
        for line in lines:
            try:
                doc = json.loads(line)
                at = datetime.strptime(doc["time"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc).timestamp()
                base = doc["data"]["baseData"]
                if not (now() - MAX_BACK <= at <= now() + MAX_AHEAD):
                    return self.reply(400, {"error": {"code": "BadRequest", "message": f"time {doc['time']} outside the window"}})
                for series in base["series"]:
                    if len(series["dimValues"]) != len(base["dimNames"]):
                        return self.reply(400, {"error": {"code": "BadRequest", "message": "dimValues and dimNames differ"}})
                    for field in ("min", "max", "sum", "count"):
                        series[field]
                    points.append({"time": doc["time"], "metric": base["metric"], "namespace": base["namespace"],
                                   "dims": dict(zip(base["dimNames"], series["dimValues"])), "max": series["max"],
                                   "min": series["min"], "resource": path[: -len("/metrics")]})
            except (KeyError, ValueError, TypeError) as err:
                return self.reply(400, {"error": {"code": "BadRequest", "message": f"malformed: {err}"}})
        with lock:
            state["points"].extend(points)
        return self.reply(200, {})

    def control(self, method, path):
        if method == "POST":
            payload = json.loads(self.body() or b"{}")
            with lock:
                if path == "/_fake/fault":
                    if "seconds" in payload:
                        payload["until"] = now() + payload.pop("seconds")
                    state["faults"].append(payload)
            if path == "/_fake/config":
                configure(payload)
            return self.reply(200, {"ok": True})
        with lock:
            key = path[len("/_fake/"):]
            data = json.dumps(state.get(key, [])).encode()
        return self.reply(200, data)


def configure(payload):
    with lock:
        if "compute" in payload:
            state["compute"].update(payload.pop("compute"))
        state.update(payload)


def main():
    if len(sys.argv) > 2:
        with open(sys.argv[2]) as file:
            configure(json.load(file))
    # FAKE_AZURE_HOST: another loopback address (169.254.169.254 inside a test's network namespace).
    host = os.environ.get("FAKE_AZURE_HOST", "127.0.0.1")
    server = ThreadingHTTPServer((host, int(sys.argv[1]) if len(sys.argv) > 1 else 0), Handler)
    server.daemon_threads = True
    print(f"PORT {server.server_address[1]}", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    server.serve_forever()


if __name__ == "__main__":
    main()
