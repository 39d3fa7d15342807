import uuid
from pathlib import Path

import pytest

from loopwright.stack import port_free
from loopwright.storage import (
    AccessDenied,
    BucketNotFound,
    EndpointUnreachable,
    ObjectNotFound,
    ObjectStore,
    S3Credentials,
    load_credentials,
)

pytestmark = pytest.mark.services


@pytest.fixture()
def store(stack_settings) -> ObjectStore:
    return ObjectStore.from_settings(stack_settings)


def test_put_get_list_delete_round_trip(store, stack_settings):
    prefix = f"s3://{stack_settings.object_store.bucket}/t/{uuid.uuid4().hex}"
    store.put_bytes(f"{prefix}/a.txt", b"alpha")
    store.put_bytes(f"{prefix}/sub/b.txt", b"beta")
    assert store.get_bytes(f"{prefix}/a.txt") == b"alpha"
    assert store.list(prefix + "/") == [f"{prefix}/a.txt", f"{prefix}/sub/b.txt"]
    assert store.exists(f"{prefix}/a.txt")
    store.delete(f"{prefix}/a.txt")
    assert not store.exists(f"{prefix}/a.txt")
    with pytest.raises(ObjectNotFound):
        store.get_bytes(f"{prefix}/a.txt")


def test_each_of_many_new_buckets_takes_writes(store):
    # Every SeaweedFS bucket takes a volume of its own; left to its default, the local
    # store had as many volume slots as GiB of free disk and failed the 9th bucket's
    # first write on an 8.6 GiB-free machine (a user's own domain bucket, in CI).
    run = uuid.uuid4().hex[:8]
    for i in range(12):
        uri = f"s3://many-{run}-{i}"
        store.ensure_bucket(uri)
        store.put_bytes(f"{uri}/logs/a.jsonl", b"{}")
        assert store.get_bytes(f"{uri}/logs/a.jsonl") == b"{}"


def test_missing_bucket_is_its_own_error(store):
    with pytest.raises(BucketNotFound, match="bucket does not exist"):
        store.get_bytes("s3://no-such-bucket-here/x")
    with pytest.raises(BucketNotFound):
        store.put_bytes("s3://no-such-bucket-here/x", b"x")


def test_wrong_credentials_are_access_denied(stack_settings):
    real = load_credentials(stack_settings)
    assert real is not None
    bad = ObjectStore(
        stack_settings.s3_endpoint_url, S3Credentials(real.access_key_id, "wrong-secret")
    )
    with pytest.raises(AccessDenied, match="check the credentials"):
        bad.list(f"s3://{stack_settings.object_store.bucket}/")


def test_unreachable_endpoint_is_its_own_error():
    port = 1
    while not port_free("127.0.0.1", 40000 + port):
        port += 1
    store = ObjectStore(f"http://127.0.0.1:{40000 + port}", S3Credentials("a", "b"), max_attempts=1)
    with pytest.raises(EndpointUnreachable, match="unreachable"):
        store.get_bytes("s3://bucket/x")


def test_credentials_file_is_owner_only(stack_settings):
    path = stack_settings.run_path / "credentials" / "s3.json"
    assert path.stat().st_mode & 0o777 == 0o600


def test_file_scheme_round_trip(tmp_path: Path):
    store = ObjectStore()
    base = tmp_path.as_uri()
    store.put_bytes(f"{base}/x/1.txt", b"one")
    store.put_bytes(f"{base}/x/2.txt", b"two")
    assert store.get_bytes(f"{base}/x/1.txt") == b"one"
    assert store.list(f"{base}/x") == [f"{base}/x/1.txt", f"{base}/x/2.txt"]
    with pytest.raises(ObjectNotFound):
        store.get_bytes(f"{base}/x/3.txt")
