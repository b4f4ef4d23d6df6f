"""One error type for every refusal: HTTP status + Azure-style numeric error code + one line of text."""

from __future__ import annotations


class CloudError(Exception):
    def __init__(self, status: int, error_code: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.error_code = error_code
        self.message = message

    def to_json(self) -> dict[str, object]:
        return {"errorCode": self.error_code, "message": self.message}


def not_found(what: str, name: str, code: int = 404000) -> CloudError:
    return CloudError(404, code, f"{what} {name!r} not found")  # repr: no raw newlines in logs


def bad_request(message: str, code: int = 400000) -> CloudError:
    return CloudError(400, code, message)
