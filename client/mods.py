"""Federator's ClientApp mods: Flower ``Mod`` functions ``(msg, context, call_next)``.

They wrap every handler the way Flower's own mods do (``app.train(mods=[...])``), outermost
first:

* `refusing` — a `FederatorError` raised anywhere below (a policy, a budget, bad
  instructions) becomes an error reply with `ReplyCode.REFUSED` and the reason, which the
  coordinator records as that node's refusal; any other exception is Flower's to report;
* `packed_io` — a message whose arrays arrive packed into one blob (a deployment sends one
  array per message part, `federator.client.packing`) is unpacked for the handler, and the
  reply is packed the same way.
"""

from __future__ import annotations

from flwr.app import Context, Error, Message
from flwr.clientapp.typing import ClientAppCallable

from federator import FederatorError
from federator.client.packing import pack_content, unpack_content
from federator.client.wire import ReplyCode


def refusing(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """A refusal below becomes an error reply naming its reason."""
    try:
        return call_next(msg, context)
    except FederatorError as err:
        reason = f"{type(err).__name__}: {err}"
        return Message(Error(code=int(ReplyCode.REFUSED), reason=reason), reply_to=msg)


def packed_io(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Packed arrays in, packed arrays out; plain messages pass through unchanged."""
    packed = unpack_content(msg)
    reply = call_next(msg, context)
    if packed:
        pack_content(reply)
    return reply


__all__ = ["packed_io", "refusing"]
