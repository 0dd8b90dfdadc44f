"""The CIFAR command-line tests' shared fixture."""
import pytest

from tests.cli.cifar_tools import make_image_folder


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    """train/<class>/*.png (4 per class) and test/<class>/*.png (2 per class)."""
    return make_image_folder(tmp_path_factory.mktemp("folders"))
