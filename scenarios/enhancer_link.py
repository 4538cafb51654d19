"""A run's link to its enhancer server: the options checked before anything starts, a local server started (or a
remote one reached) and its hello awaited, and what to tell a user whose remote server does not answer.

`scenarios.runner` calls `check_enhancer_options` before it loads anything and `connect_enhancer` once the scene
is known; the run stops a local server it started (`neural_sensor.enhance.local.stop_server`).
"""

from __future__ import annotations

import sys

from tqdm import tqdm

from neural_sensor.enhance.protocol import MAX_DEADLINE_MS, is_loopback


def check_enhancer_options(options) -> None:
    """Everything about a RunOptions' enhancer options that can be checked before anything is started."""
    endpoint = options.enhancer
    if endpoint is None:  # no enhancer: its options would be silently ignored (the builder's scene runs none)
        defaults = type(options)()  # RunOptions' own defaults
        given = [flag for flag, value in (
            ("--enhancer-checkpoint", options.enhancer_checkpoint is not None),
            ("--enhancer-precision", options.enhancer_precision != "auto"),
            ("--enhancer-deadline-ms", options.enhancer_deadline_ms != defaults.enhancer_deadline_ms),
            ("--temporal-blend", options.temporal_blend != defaults.temporal_blend)) if value]
        if given:
            raise ValueError(f"{' and '.join(given)} {'is' if len(given) == 1 else 'are'} for a run with an enhancer, "
                             "and this run has none (--enhancer none, the default for --scene builder): add "
                             "--enhancer local")
        return
    if endpoint != "local":
        from neural_sensor.enhance.protocol import check_endpoint

        check_endpoint(endpoint, "enhancer endpoint (or 'local')")
    deadline = options.enhancer_deadline_ms
    if (isinstance(deadline, bool) or not isinstance(deadline, (int, float))
            or not 0 < deadline <= MAX_DEADLINE_MS):  # (the client's own check named its parameter, not the option)
        raise ValueError(f"enhancer deadline (--enhancer-deadline-ms) must be a positive number of milliseconds, "
                         f"at most {MAX_DEADLINE_MS:g} (an hour), got {deadline!r}")
    if options.enhancer_checkpoint is not None and endpoint != "local":
        raise ValueError("--enhancer-checkpoint is for --enhancer local (a remote server has its own)")
    from neural_sensor.enhance.precision import check_cpu_precision

    if check_cpu_precision(options.enhancer_precision, "enhancer precision") != "auto" and endpoint != "local":
        raise ValueError("--enhancer-precision is for --enhancer local (a remote server has its own)")


def serve_hint(endpoint: str) -> str:
    """How to start a server the run's client can reach at `endpoint` (the error's hint when none answers): the
    exact command for a loopback endpoint; for another host, a tunnel (a server binds beyond loopback only with
    CurveZMQ keys, which the run's client does not take)."""
    if is_loopback(endpoint):
        return f"start one with `neural-sensor serve-enhancer --bind {endpoint}`"
    port = endpoint.rsplit(":", 1)[-1] if endpoint.count(":") >= 2 else "5555"
    return (f"a server binds beyond loopback only with CurveZMQ keys, which a run's client does not take: on that host "
            f"start `neural-sensor serve-enhancer --bind tcp://127.0.0.1:{port}`, here `ssh -N -L "
            f"{port}:127.0.0.1:{port} HOST`, then run with --enhancer tcp://127.0.0.1:{port}")


REMOTE_WAIT_S = 10.0  # how long a run waits for a remote server to answer with a ready worker
WORKERS_LOADING_S = 60.0  # how much longer a run waits for a remote server that answers but has no worker ready


def connect_enhancer(options):
    """A RunOptions' enhancer: (EnhancerClient, local server or None); the server must answer hello (versions
    checked) to start."""
    from neural_sensor.enhance.client import EnhancerClient, EnhancerError, EnhancerVersionError
    from neural_sensor.enhance.local import DEFAULT_CHECKPOINT, start_server, stop_server

    server = client = None  # the options were checked by check_enhancer_options before anything started
    try:
        endpoint = options.enhancer
        if endpoint == "local":
            server = start_server(checkpoint=options.enhancer_checkpoint or DEFAULT_CHECKPOINT,
                                  precision=options.enhancer_precision)
            endpoint = server.endpoint
        client = EnhancerClient(endpoint, deadline_ms=options.enhancer_deadline_ms)

        def say_waiting(left_s: float) -> None:  # a remote server: say what the run is waiting for
            if client.server is not None:  # it answered hello: its workers are loading the model
                print(f"neural-sensor: the enhancer at {endpoint} answers, but none of its workers is ready yet "
                      f"(loading the model); waiting up to {left_s:.0f} s more", file=sys.stderr)
            else:
                print(f"neural-sensor: no answer from the enhancer at {endpoint} yet; waiting up to "
                      f"{left_s:.0f} s more", file=sys.stderr)

        try:
            client.wait_ready(timeout_s=REMOTE_WAIT_S,
                              waiting=say_waiting if server is None and options.progress else None)
        except EnhancerError as err:
            if server is not None or isinstance(err, EnhancerVersionError):
                raise
            if client.server is None:
                # a remote server absent at the start is an error (one that goes away mid-run costs raw ticks);
                # what listens there, if anything, is asked (to ZeroMQ a closed port and a web server are silence)
                from neural_sensor.enhance.listener import describe_listener

                found = describe_listener(endpoint)
                found = f"; {found}" if found else ""
                raise EnhancerError(f"{err}{found}; is a server running there? ({serve_hint(endpoint)}, or run with "
                                    "--enhancer local, which starts one for the run, or --enhancer none for the raw "
                                    "render)") from None
            if client.server.get("stopping") is True:
                raise EnhancerError(f"{err}; start it again ({serve_hint(endpoint)}), or run with --enhancer local "
                                    "or --enhancer none") from None
            # it answers and its workers are loading (a loaded host takes tens of seconds): give them longer
            if options.progress:
                print(f"neural-sensor: the enhancer at {endpoint} answers, but none of its workers is ready after "
                      f"{REMOTE_WAIT_S:.0f} s (loading the model); waiting up to {WORKERS_LOADING_S:.0f} s more",
                      file=sys.stderr)
            try:
                client.wait_ready(timeout_s=WORKERS_LOADING_S)
            except EnhancerError as again:
                if isinstance(again, EnhancerVersionError):
                    raise
                raise EnhancerError(f"{again}: the server answers, but none of its workers became ready (they "
                                    "load the model at start and after a crash: see the server's output)") from None
    except BaseException:
        if client is not None:
            client.close()
        if server is not None:
            stop_server(server)
        raise
    return client, server


LOCAL_RESTARTS = 3  # how often a run restarts its own local enhancer server after it exited mid-run


class LocalServerKeeper:
    """The run's own local enhancer server (`--enhancer local`), started again on its endpoint when it exits
    mid-run (killed, out of memory): the client reconnects by itself, the ticks until its worker is ready get the
    raw render. At most LOCAL_RESTARTS restarts; each is said once on stderr. (A server that died had left the rest of
    the run raw, "reconnecting in the background", exit 0.)"""

    def __init__(self, server):
        self.server = server
        self.restarts = 0
        self._gave_up = False

    def check(self, frame: int, options) -> None:
        """Restart the server if it has exited (call on a tick the enhancer did not refine)."""
        from neural_sensor.enhance.local import DEFAULT_CHECKPOINT, _remove_folders, start_server

        code = self.server.process.poll()
        if code is None or self._gave_up:
            return
        how = f"killed by signal {-code}" if code < 0 else f"exit code {code}"
        _remove_folders(self.server.folder)
        if self.restarts >= LOCAL_RESTARTS:
            self._gave_up = True
            tqdm.write(f"neural-sensor: the local enhancer server exited again ({how}) at frame {frame}, after "
                       f"{LOCAL_RESTARTS} restarts: the rest of the run gets the raw render", file=sys.stderr)
            return
        self.restarts += 1
        tqdm.write(f"neural-sensor: the local enhancer server exited ({how}) at frame {frame}; restarting it on "
                   f"{self.server.endpoint} ({self.restarts} of at most {LOCAL_RESTARTS}; the raw render until its "
                   "worker is ready)", file=sys.stderr)
        self.server = start_server(checkpoint=options.enhancer_checkpoint or DEFAULT_CHECKPOINT,
                                   bind=self.server.endpoint, precision=options.enhancer_precision, wait=False)

    def stop(self) -> None:
        from neural_sensor.enhance.local import stop_server

        stop_server(self.server)
