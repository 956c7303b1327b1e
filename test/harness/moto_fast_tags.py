"""Starts moto_server with a faster EC2 tag lookup (loaded by test/harness/moto.ts).

moto 5.2.5 reads the tags of ONE resource (TaggedEC2Resource.get_tags) by running describe_tags
with a resource-id filter, which compiles a pattern and tests it against every tagged resource of
the region. DescribeInstances calls it for every instance it filters on a tag and for every
instance it renders, so one call costs O(instances x tagged resources): 10-30 s at ~500 instances.

The replacement reads the resource's own entry of the same tag table. The answer is the same list
in the same order: a resource id holds no wildcard characters, so the stock pattern matches that
id alone, and both walk that resource's tag dict in insertion order.
test/integration/moto-fast-tags.test.ts compares DescribeInstances answers with stock moto.
"""
import sys

from moto.ec2.models.core import TaggedEC2Resource
from moto.ec2.utils import EC2_PREFIX_TO_RESOURCE, get_prefix


def _get_tags(self):
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

if __name__ == "__main__":
    from moto.server import main

    sys.argv[0] = "moto_server"
    sys.exit(main())
