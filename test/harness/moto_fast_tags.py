"""Starts moto_server with a faster EC2 tag lookup (loaded by test/harness/moto.ts).

moto 5.2.5 reads the tags of ONE resource (TaggedEC2Resource.get_tags) by running describe_tags
with a resource-id filter, which compiles a pattern and tests it against every tagged resource of
the region. DescribeInstances calls it for every instance it filters on a tag and for every
instance it renders, so one call costs O(instances x tagged resources): 10-30 s at ~500 instances.

The replacement reads the resource's own entry of the same tag table. The answer is the same list
in the same order: a resource id holds no wildcard characters, so the stock pattern matches that
id alone, and both walk that resource's tag dict in insertion order.
A second cost: every tag filter value is translated from AWS wildcards to a regular expression
again for every instance it is tested against (fnmatch.translate, 200 values x 500 instances =
100,000 translations per call). The translation is a pure function of the value, so it is cached.

test/integration/moto-fast-tags.test.ts compares DescribeInstances answers of the stock and the
fast code on the same server and state: POST /vmforge/fast-tags/off (or /on) switches between them
at run time (GET answers the current mode and how many tag reads the fast code served). The fast code is on at start.
"""
import functools
import json
import sys

from moto.ec2.models.core import TaggedEC2Resource
from moto.ec2.utils import EC2_PREFIX_TO_RESOURCE, get_prefix


_fast = {"on": True, "reads": 0}
_stock_get_tags = TaggedEC2Resource.get_tags


def _get_tags(self):
    if not _fast["on"]:
        return _stock_get_tags(self)
    _fast["reads"] += 1
    resource_id = self.id
    if not resource_id:
        return []
    # .get, not [...]: the table is a defaultdict and a read must not add an entry.
    tags = self.ec2_backend.tags.get(resource_id)
    if not tags:
        return []
    resource_type = EC2_PREFIX_TO_RESOURCE.get(get_prefix(resource_id), "")
    return [
        {"resource_id": resource_id, "key": key, "value": value, "resource_type": resource_type}
        for key, value in tags.copy().items()
    ]


TaggedEC2Resource.get_tags = _get_tags

# Every module that imported the translation by name gets the cached one.
import moto.ec2.models  # noqa: E402,F401  (loads the EC2 modules that use it)
import moto.ec2.responses  # noqa: E402,F401
import moto.ec2.utils as _ec2_utils  # noqa: E402

_stock_translate = _ec2_utils.simple_aws_filter_to_re
_cached = functools.lru_cache(maxsize=65536)(_stock_translate)


def _cached_translate(value):
    return _cached(value) if _fast["on"] else _stock_translate(value)


for _module in list(sys.modules.values()):
    if getattr(_module, "__name__", "").startswith("moto.") and getattr(_module, "simple_aws_filter_to_re", None) is _stock_translate:
        _module.simple_aws_filter_to_re = _cached_translate


def _with_mode_switch(call):
    def dispatch(self, environ, start_response):
        path = environ.get("PATH_INFO", "")
        if not path.startswith("/vmforge/fast-tags"):
            return call(self, environ, start_response)
        method = environ.get("REQUEST_METHOD", "GET")
        if method == "POST" and path in ("/vmforge/fast-tags/on", "/vmforge/fast-tags/off"):
            _fast["on"] = path.endswith("/on")
        elif method != "GET" or path != "/vmforge/fast-tags":
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"unknown fast-tags path"]
        start_response("200 OK", [("Content-Type", "application/json")])
        return [json.dumps({"fast": _fast["on"], "fastReads": _fast["reads"]}).encode()]

    return dispatch


from moto.moto_server.werkzeug_app import DomainDispatcherApplication  # noqa: E402

DomainDispatcherApplication.__call__ = _with_mode_switch(DomainDispatcherApplication.__call__)

if __name__ == "__main__":
    from moto.server import main

    sys.argv[0] = "moto_server"
    sys.exit(main())
