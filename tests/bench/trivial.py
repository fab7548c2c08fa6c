"""The trivial Litestar endpoint the slot reads are compared against: same framework, same server flags."""

from litestar import Litestar, get


@get("/ping", sync_to_thread=False)
def ping() -> dict[str, bool]:
    return {"ok": True}


app = Litestar([ping])
