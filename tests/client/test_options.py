"""ClientOptions (how a Recommender calls its models) and the parts a Recommender holds; no
server needed: the stores are given and no call is made."""
import ast
import dataclasses
import pathlib

import grpc
import pytest

from recsys_tf.client import (
    ClientOptions,
    InMemoryItemStore,
    ModelCaller,
    Recommender,
    RequestBuilder,
    Rules,
    UserStore,
)
from recsys_tf.client.calls import CHANNELS

CLIENT = pathlib.Path(__file__).resolve().parents[2] / "recsys_tf" / "client"


def test_defaults_and_normalised_values():
    opts = ClientOptions()
    assert (opts.timeout, opts.stage_shares, opts.max_attempts, opts.backoff) == (
        2.0, (0.4, 0.95), 3, (0.005, 0.1))
    assert opts.metadata_ttl == 60.0 and opts.ranker_signature == "auto"
    assert opts.retrieval_signature == "serving_default" and opts.diversity_by == "auto"
    given = ClientOptions(timeout=1, stage_shares=[0.3, 1], backoff=[0, 0.2], max_attempts=0,
                          strict=1)
    assert given.timeout == 1.0 and isinstance(given.timeout, float)
    assert given.stage_shares == (0.3, 1.0) and given.backoff == (0.0, 0.2)
    assert given.max_attempts == 1 and given.strict is True    # 0 attempts: one call
    with pytest.raises(dataclasses.FrozenInstanceError):
        opts.timeout = 5.0
    assert hash(opts) == hash(ClientOptions()) and opts == ClientOptions()


@pytest.mark.parametrize("bad, named", [
    (dict(timeout=0), "timeout"),
    (dict(stage_shares=(0.5, 0.4)), "stage_shares"),
    (dict(stage_shares=(0, 0.9)), "stage_shares"),
    (dict(stage_shares=(0.4, 1.2)), "stage_shares"),
    (dict(stage_shares=(0.4,)), "stage_shares"),
    (dict(backoff=(0.2, 0.1)), "backoff"),
    (dict(metadata_ttl=-1), "metadata_ttl"),
    (dict(ranker_version=1, ranker_label="canary"), "not both"),
    (dict(diversity_by="colour"), "diversity_by"),
    (dict(max_workers=0), "max_workers"),
])
def test_bad_values_are_named(bad, named):
    with pytest.raises(ValueError, match=named):
        ClientOptions(**bad)
    with pytest.raises(ValueError, match=named):   # replace checks as the constructor does
        ClientOptions().replace(**bad)


def _stores():
    items = InMemoryItemStore([{"item_id": "i1", "popularity": 2}, {"item_id": "i2"}],
                              "item_id")
    return dict(item_store=items, user_store=UserStore([{"user_id": "u1"}], "user_id"))


class NoCalls:
    """A ServingClient stand-in that must not be called."""

    def signature(self, *args, **kwargs):
        raise AssertionError("no call expected")

    predict = signature


def test_recommender_holds_its_parts_and_options():
    opts = ClientOptions(timeout=0.7, max_attempts=5, backoff=(0.01, 0.02), strict=True,
                         retry_resource_exhausted=True, metadata_ttl=None, seed=1)
    rules = Rules(category_cap=2)
    with Recommender(None, None, ranker="dcn_v2", rules=rules, client=NoCalls(),
                     options=opts, **_stores()) as rec:
        assert rec.options is opts and rec.timeout == 0.7 and rec.rules is rules
        assert isinstance(rec.calls, ModelCaller) and isinstance(rec.requests, RequestBuilder)
        assert rec.calls.max_attempts == 5 and rec.calls.backoff == (0.01, 0.02)
        assert rec.calls.metadata_ttl is None
        assert rec.calls.retry_codes == {grpc.StatusCode.UNAVAILABLE,
                                         grpc.StatusCode.RESOURCE_EXHAUSTED}
        assert rec.requests.strict is True
        assert rec.client is rec.ranker_client and rec.ranker == "dcn_v2"
        assert rec.items.size == 2 and rec.users.get("u1") == {"user_id": "u1"}
    # timeout= is the common one: it replaces the options' and leaves the rest as given
    with Recommender(None, None, client=NoCalls(), timeout=3, options=opts,
                     **_stores()) as rec:
        assert rec.timeout == 3.0 and rec.options == opts.replace(timeout=3.0)
        assert ModelCaller().retry_codes == {grpc.StatusCode.UNAVAILABLE}
    with pytest.raises(TypeError, match="ClientOptions"):
        Recommender(None, None, client=NoCalls(), options={"timeout": 1.0}, **_stores())
    with pytest.raises(ValueError, match="tables"):
        Recommender(None, None, client=NoCalls())


def test_a_ranker_target_gets_its_own_shared_channel():
    opts = ClientOptions(ranker_target="127.0.0.1:9")
    with Recommender("127.0.0.1:8", None, options=opts, **_stores()) as rec:
        assert rec.client is not rec.ranker_client
        assert rec.ranker_client.target == "127.0.0.1:9"
        assert {"127.0.0.1:8", "127.0.0.1:9"} <= set(CHANNELS.open_targets())
    assert not {"127.0.0.1:8", "127.0.0.1:9"} & set(CHANNELS.open_targets())


def test_no_private_name_crosses_a_client_module():
    """Each module of the client imports only public names of the others (and of the wire)."""
    crossing = []
    for path in sorted(CLIENT.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("recsys_tf"):
                crossing += [f"{path.name}: {node.module}.{a.name}" for a in node.names
                             if a.name.startswith("_")]
    assert not crossing, crossing
