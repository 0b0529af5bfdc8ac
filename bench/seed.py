#!/usr/bin/env python3
"""Seeds a running wxauth for bench/run: registers COUNT accounts oSeed0 … oSeed{COUNT-1} with a
typed phone through the API (the server must allow bare-openid registration: openid_login = open,
rate limit off), then prints one line: the token of the last registration, for the token login
benchmark. Exits non-zero on any failed registration.

    bench/seed.py http://127.0.0.1:PORT/miniprog/wx_auth/ COUNT
"""

import http.client
import json
import sys
import threading
import urllib.parse

CONNECTIONS = 8


def main():
    api, count = sys.argv[1], int(sys.argv[2])
    url = urllib.parse.urlsplit(api)
    tokens, failures = [None] * count, []

    def register(first):
        connection = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
        for index in range(first, count, CONNECTIONS):
            body = json.dumps({"openid": f"oSeed{index}", "phone": "13800138000"})
            connection.request("POST", url.path + "register", body,
                               {"Content-Type": "application/json"})
            response = connection.getresponse()
            answer = response.read()
            if response.status != 200:
                failures.append(f"oSeed{index}: HTTP {response.status} {answer[:200]!r}")
                return
            tokens[index] = json.loads(answer)["results"][0]["token"]
        connection.close()

    threads = [threading.Thread(target=register, args=(first,)) for first in range(CONNECTIONS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures or None in tokens:
        sys.exit("seeding failed: " + "; ".join(failures[:3]))
    print(tokens[-1])


if __name__ == "__main__":
    main()
