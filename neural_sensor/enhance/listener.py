"""What listens at an enhancer endpoint that never answered hello (`describe_listener`): to ZeroMQ a closed port, a
host that is down and a web server are all the same silence, so a run's error asks the socket itself."""

from __future__ import annotations

import os
import socket

ZMTP_GREETING_BYTES = 10  # a ZeroMQ peer's first bytes on a new connection: 0xFF, 8 bytes, then a byte whose low
#   bit is set (the ZMTP signature, rfc.zeromq.org/spec/23); each side sends them at once


def describe_listener(endpoint: str, timeout_s: float = 1.0) -> str | None:
    """What listens at a tcp:// (or ipc://) endpoint that never answered the enhancer's hello, in words for the
    error: "nothing listens ..." (refused, or no socket file), "no answer ..." (dropped: a firewall, a host that is
    down), "... answers, but not as a ZeroMQ server ..." (another service: it sent no ZeroMQ greeting, or other
    bytes), or None where a ZeroMQ peer greets (an enhancer busy or not ours: the hello's own error says) or the
    endpoint is not one this can ask. To ZeroMQ all of these are the same silence."""
    if endpoint.startswith("ipc://"):
        path = endpoint[len("ipc://"):]
        if not os.path.exists(path):
            return f"nothing listens at {endpoint} (no socket file {path})"
        probe = socket.socket(socket.AF_UNIX)
        try:
            probe.settimeout(timeout_s)
            probe.connect(path)
        except ConnectionRefusedError:
            return f"nothing listens at {endpoint} (its socket file was left by a server that is gone)"
        except OSError:
            return None
        finally:
            probe.close()
        return None
    if not endpoint.startswith("tcp://"):
        return None
    host, _, port = endpoint[len("tcp://"):].rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    where = f"{host}:{port}"
    try:
        conn = socket.create_connection((host, int(port)), timeout=timeout_s)
    except ConnectionRefusedError:
        return f"nothing listens at {where} (connection refused)"
    except socket.gaierror as err:
        return f"the host {host!r} is not found ({err.strerror})"
    except (TimeoutError, socket.timeout):
        return f"no answer from {where} within {timeout_s:g} s (a host that is down, or a firewall)"
    except (OSError, ValueError) as err:
        return f"{where} cannot be reached ({err})"
    with conn:
        data = b""
        try:
            conn.settimeout(timeout_s)
            while len(data) < ZMTP_GREETING_BYTES:
                chunk = conn.recv(ZMTP_GREETING_BYTES - len(data))
                if not chunk:
                    break
                data += chunk
        except OSError:  # (a timeout: it waits for the client to speak first, as HTTP does)
            pass
    if len(data) == ZMTP_GREETING_BYTES and data[0] == 0xFF and data[9] & 1:
        return None
    said = f"it sent {data!r}" if data else "it sent nothing"
    return f"something at {where} answers, but not as a ZeroMQ server ({said}; another service on that port?)"


__all__ = ["describe_listener", "ZMTP_GREETING_BYTES"]
