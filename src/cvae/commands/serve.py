"""cvae serve: a local web page and JSON API for trained runs."""

from __future__ import annotations

import ipaddress
import socket
import warnings

from ..errors import CvaeError, CvaeWarning


def add_parsers(sub) -> None:
    p = sub.add_parser("serve", help="a local web page and JSON API (/v1/) for trained runs",
                       description="Serve the named run folders (and nothing else) on a local web page: sample grids "
                       "for chosen conditions, latent sliders, uploads to reconstruct, transfer and score, the run's "
                       "pictures and metrics. The JSON API behind it is documented at /docs. Needs "
                       'pip install "cvae[serve]".')
    p.add_argument("runs", nargs="+", metavar="RUN", help="run folders to serve")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 picks a free one)")
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N (default cpu)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads for the model (default 1: requests are small and run one at a time)")
    p.add_argument("--max-n", type=int, default=64, help="most examples one request may generate (default 64)")
    p.add_argument("--max-upload-mb", type=float, default=5.0, help="largest upload in MB (default 5)")
    p.add_argument("--quiet", action="store_true", help="do not log every request")
    p.set_defaults(func=cmd_serve)


def _bind(host: str, port: int) -> socket.socket:
    if not 0 <= port <= 65535:
        raise CvaeError(f"--port must be from 0 to 65535, got {port}")
    try:
        info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as e:
        raise CvaeError(f"cannot listen on --host {host}: {e.strerror}") from None
    sock = socket.socket(info[0], socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(info[4])
    except OSError as e:
        sock.close()
        raise CvaeError(f"cannot listen on {host}:{port} ({e.strerror}); choose another --port (0 picks a free one)") \
            from None
    sock.listen(2048)
    return sock


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def cmd_serve(args) -> int:
    from ..serve import check_web_stack

    check_web_stack()
    import torch
    import uvicorn

    from ..serve.app import create_app
    from ..serve.served import Limits

    if args.threads < 1:
        raise CvaeError(f"--threads must be a positive whole number, got {args.threads}")
    if not 0 < args.max_upload_mb <= 1024:
        raise CvaeError(f"--max-upload-mb must be above 0 and at most 1024, got {args.max_upload_mb}")
    if not 1 <= args.max_n <= 256:
        raise CvaeError(f"--max-n must be from 1 to 256, got {args.max_n}")
    torch.set_num_threads(args.threads)
    limits = Limits(max_n=args.max_n, max_upload_bytes=int(args.max_upload_mb * 2**20))
    sock = _bind(args.host, args.port)  # a port in use is said before the runs take their time to load
    try:
        app = create_app(args.runs, device=args.device, limits=limits)
    except BaseException:
        sock.close()
        raise
    if not _is_loopback(args.host):
        warnings.warn(f"--host {args.host} makes the page reachable from other machines: anyone who reaches it can "
                      "use these models (it has no login)", CvaeWarning, stacklevel=1)
    host, port = sock.getsockname()[:2]
    shown, where = (f"[{host}]" if ":" in host else host), ""
    if host in ("0.0.0.0", "::"):  # every interface: a browser cannot open 0.0.0.0 from elsewhere
        import socket

        shown, where = socket.gethostname(), " on every interface"
    names = ", ".join(app.fastapi.state.served)
    print(f"serving {names} at http://{shown}:{port}/{where}  (API: /v1/runs, reference: /docs; Ctrl-C stops)", flush=True)
    config = uvicorn.Config(app, log_level="warning" if args.quiet else "info", access_log=not args.quiet,
                            timeout_graceful_shutdown=2)
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        sock.close()
    return 0
