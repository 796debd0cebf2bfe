"""A real OTLP/HTTP trace receiver for tests/traces.rs.

Listens on 127.0.0.1 (port 0 unless --port), prints "listening on PORT",
decodes every POST /v1/traces body as an ExportTraceServiceRequest with
opentelemetry-proto, and appends each span to OUT as one JSON line:
trace and span ids in hex, parent, name, kind, attributes, links, status,
and the resource's attributes. Each request also appends a line
{"export": N} with its span count. --delay S holds every answer S seconds
(a slow collector); --status CODE answers CODE instead of 200; --count
writes only the {"export": N, "bytes": B} lines (scripts/bench-tracing).
"""

import argparse
import gzip
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

KINDS = {v: k.removeprefix("SPAN_KIND_") for k, v in trace_pb2.Span.SpanKind.items()}
STATUS = {v: k.removeprefix("STATUS_CODE_") for k, v in trace_pb2.Status.StatusCode.items()}


def value(v):
    kind = v.WhichOneof("value")
    if kind is None:
        return None
    if kind in ("array_value", "kvlist_value", "bytes_value"):
        return str(getattr(v, kind))
    return getattr(v, kind)


def attributes(kvs):
    return {kv.key: value(kv.value) for kv in kvs}


def spans(request):
    for rs in request.resource_spans:
        resource = attributes(rs.resource.attributes)
        for ss in rs.scope_spans:
            for s in ss.spans:
                yield {
                    "trace_id": s.trace_id.hex(),
                    "span_id": s.span_id.hex(),
                    "parent_span_id": s.parent_span_id.hex(),
                    "name": s.name,
                    "kind": KINDS.get(s.kind, str(s.kind)),
                    "attributes": attributes(s.attributes),
                    "links": [{"trace_id": l.trace_id.hex(), "span_id": l.span_id.hex()} for l in s.links],
                    "status": STATUS.get(s.status.code, str(s.status.code)),
                    "start_ns": s.start_time_unix_nano,
                    "end_ns": s.end_time_unix_nano,
                    "resource": resource,
                }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--delay", type=float, default=0.0)
    ap.add_argument("--status", type=int, default=200)
    ap.add_argument("--count", action="store_true")
    args = ap.parse_args()
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            if self.headers.get("Content-Encoding") == "gzip":
                body = gzip.decompress(body)
            request = trace_service_pb2.ExportTraceServiceRequest()
            request.ParseFromString(body)
            if args.count:
                found = [s for rs in request.resource_spans for ss in rs.scope_spans for s in ss.spans]
            else:
                found = list(spans(request))
            with lock, open(args.out, "a") as f:
                if not args.count:
                    for s in found:
                        f.write(json.dumps(s) + "\n")
                f.write(json.dumps({"export": len(found), "bytes": len(body), "path": self.path}) + "\n")
            time.sleep(args.delay)
            reply = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
            self.send_response(args.status)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, *a):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    print(f"listening on {server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    sys.exit(main())
