"""The ``train.secagg`` handler: train exactly as ``train`` does, reply with a masked update.

The node trains through the very same ``train`` handler (local data, local DP-SGD with the
node's ledger and budget), then sends ``local − global`` in the legacy layout Flower's
`secaggplus_mod` masks (`federator.privacy.secagg`). Refusals (budget exhausted, an update
outside the encoding's range) become an error reply, which the server counts as a dropout.
"""

from __future__ import annotations

from collections.abc import Callable

from flwr.app import Context, Message, RecordDict

from federator import UpdateRejected
from federator.client.wire import NUM_EXAMPLES
from federator.privacy.secagg_client import (
    fitres_reply,
    read_fitins,
    secagg_update,
    secagg_weight,
)

Handler = Callable[[Message, Context], Message]


def secagg_handler(train: Handler) -> Handler:
    """A ``train.secagg`` handler that trains with ``train`` (Federator's ordinary handler)."""

    def train_secagg(msg: Message, context: Context) -> Message:
        fit = read_fitins(msg)
        # Hand ``train`` the message in Federator's own layout (a client cannot create a
        # fresh instruction message), and give it back its legacy content afterwards.
        legacy = msg.content
        msg.content = RecordDict({"arrays": fit.arrays, "config": fit.config})
        try:
            reply = train(msg, context)
        finally:
            msg.content = legacy
        if reply.has_error():
            raise UpdateRejected(str(reply.error.reason))
        local = reply.content.array_records["arrays"]
        metrics = {
            k: v
            for k, v in reply.content.metric_records["metrics"].items()
            if not isinstance(v, list)
        }
        num_examples = metrics.get(NUM_EXAMPLES)
        if not isinstance(num_examples, int):
            raise UpdateRejected(f"training reported no whole {NUM_EXAMPLES!r}")
        update = secagg_update(fit.arrays, local, clipping_range=fit.clipping_range)
        weight = secagg_weight(num_examples, fit.max_weight)
        return fitres_reply(msg, update=update, weight=weight, metrics=metrics)

    return train_secagg
