"""Expected failures of qactl: the CLI prints them as one line and exits 1, without a traceback."""


class QactlError(Exception):
    """Base of every expected qactl failure; the message is what the operator reads."""


class ConfigError(QactlError):
    """Settings that cannot work (bad value, missing file)."""


class PrerequisiteError(QactlError):
    """Something qactl needs is not installed; the message says what to install."""


class PortInUseError(QactlError):
    """A port qactl needs is taken by another program."""

    def __init__(self, port: int, component: str, setting: str) -> None:
        super().__init__(
            f"port {port} needed by {component} is in use by another program; "
            f"free it or move {component} with {setting}"
        )
        self.port = port
        self.component = component
        self.setting = setting


class ProvisionError(QactlError):
    """Downloading or preparing a component failed."""


class ComponentFailed(QactlError):
    """A component did not start or did not become healthy in time."""


class StackNotRunning(QactlError):
    """A command needs the stack that `qactl up` starts, and it is not up."""


class RequestRejected(QactlError):
    """A service refused a request as invalid (HTTP 4xx); the message says what was wrong."""

    def __init__(self, message: str, status_code: int) -> None:
        super().__init__(message)
        self.status_code = status_code


class ServiceUnavailable(QactlError):
    """A service is up but cannot do what was asked right now (HTTP 503); retry later."""


class QuestionNotFound(QactlError):
    """No question with that id is known to the pipeline."""
