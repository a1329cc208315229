"""mitmdump addon for bench/peers.sh: connect to a fixed address for a host name, as curl's
--resolve does, keeping the name for SNI and Host. FLEETFORGE_BENCH_RESOLVE="host=ip[,host=ip]"."""
import os

ADDRESSES = dict(
    pair.split("=", 1) for pair in os.environ.get("FLEETFORGE_BENCH_RESOLVE", "").split(",") if "=" in pair
)


class Resolve:
    def server_connect(self, data):
        host, port = data.server.address
        ip = ADDRESSES.get(host.lower())
        if ip:
            data.server.sni = data.server.sni or host
            data.server.address = (ip, port)


addons = [Resolve()]
