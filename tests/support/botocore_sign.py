#!/usr/bin/env python3
"""Signs requests with botocore (Debian's python3-botocore) at a fixed time, for sigv4_test.

stdin: {"time": "YYYYMMDDTHHMMSSZ", "cases": [{"method", "url", "headers", "body",
         "access_key", "secret_key", "token", "region"}]}
stdout: [{"authorization"}] in the same order. Nothing is sent anywhere.
"""
import datetime
import json
import sys
from unittest import mock

import botocore.auth
import botocore.awsrequest
import botocore.credentials


def main():
    spec = json.load(sys.stdin)
    fixed = datetime.datetime.strptime(spec["time"], "%Y%m%dT%H%M%SZ")

    class FixedClock(datetime.datetime):
        @classmethod
        def utcnow(cls):
            return fixed

        @classmethod
        def now(cls, tz=None):
            return fixed.replace(tzinfo=tz) if tz else fixed

    out = []
    with mock.patch.object(botocore.auth.datetime, "datetime", FixedClock):
        for case in spec["cases"]:
            creds = botocore.credentials.Credentials(case["access_key"], case["secret_key"], case.get("token") or None)
            signer = botocore.auth.S3SigV4Auth(creds, "s3", case["region"])
            req = botocore.awsrequest.AWSRequest(method=case["method"], url=case["url"],
                                                 headers=case.get("headers", {}),
                                                 data=case.get("body", "").encode())
            signer.add_auth(req)
            out.append({"authorization": req.headers["Authorization"]})
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
