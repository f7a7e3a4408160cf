# Runtime image for the B2BUA. Build: docker build -t b2bua .
# Run:   docker run --network host -e B2BUA_SIP__ADVERTISED_HOST=HOST_IP \
#          -e B2BUA_MEDIA__EMBEDDED__ADDRESS=0.0.0.0 -e B2BUA_MEDIA__EMBEDDED__ADVERTISED_ADDRESS=HOST_IP \
#          b2bua --listen 0.0.0.0:5060 --next-hop PBX_IP:5060 --http 0.0.0.0:9090
# The embedded RTP relay runs inside the container as the daemon's child (ports media.embedded.ports).
FROM python:3.11-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY b2bua ./b2bua
COPY rtp_relay ./rtp_relay
# gcc for the compiled SIP stack (b2bua/native.py: mypyc, into /opt/b2bua/venv/native); the
# runtime image needs no compiler. Without it the daemon would run the same modules from source.
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev && rm -rf /var/lib/apt/lists/*
RUN python -m venv /opt/b2bua/venv && /opt/b2bua/venv/bin/pip install --no-cache-dir '.[native]' \
    && /opt/b2bua/venv/bin/python -m b2bua.native_build \
    && rm -rf /opt/b2bua/venv/native/src /opt/b2bua/venv/native/tmp /opt/b2bua/venv/native/tree

FROM python:3.11-slim-bookworm
RUN useradd --system --no-create-home b2bua
COPY --from=build /opt/b2bua/venv /opt/b2bua/venv
USER b2bua
EXPOSE 5060/udp 5060/tcp 9090/tcp 30000-39999/udp
HEALTHCHECK --interval=10s --timeout=3s CMD python -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:9090/healthz', timeout=2)" || exit 1
# SIGTERM drains calls (see README); give it as long as shutdown.drain_timeout_s: docker stop -t 60
STOPSIGNAL SIGTERM
ENTRYPOINT ["/opt/b2bua/venv/bin/b2bua"]
CMD ["--listen", "0.0.0.0:5060", "--http", "0.0.0.0:9090"]
