from tests.fixtures.prometheus import *  # noqa: F403
from tests.fixtures.prometheus_server import *  # noqa: F403
from tests.fixtures.s3 import *  # noqa: F403
