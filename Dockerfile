FROM python:3.11.7-slim-bookworm
WORKDIR /app
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    SIP_HUB_HOST=0.0.0.0 SIP_HUB_PORT=8080 SIP_HUB_DATA_DIR=/var/lib/sip_hub
COPY pyproject.toml README.md ./
COPY sip_hub ./sip_hub
COPY mappings ./mappings
RUN pip install --no-cache-dir . && useradd --system --uid 10001 siphub \
    && mkdir -p /var/lib/sip_hub && chown siphub /var/lib/sip_hub
USER siphub
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --retries=5 \
  CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8080/healthz').status != 200)"
CMD ["sip-hub", "serve"]
