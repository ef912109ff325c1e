// The OpenAPI 3.0 document served at /openapi.json, and the playground page at /.
#include "server/api_server_impl.h"

namespace fluxpipe::server {

const std::string& openapi_document() {
  static const std::string doc = R"json({
  "openapi": "3.0.3",
  "info": {"title": "fluxpipe generate v3", "version": "3",
           "description": "FLUX.1-schnell text-to-image, compatible with the hosted generate v3 API. status is always PENDING, SUCCESS or FAILURE; finer state is in `state`."},
  "components": {
    "securitySchemes": {
      "apiKey": {"type": "apiKey", "in": "header", "name": "API-Key"},
      "xApiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
      "bearer": {"type": "http", "scheme": "bearer"}
    },
    "schemas": {
      "GenerateRequest": {
        "type": "object", "required": ["prompt"],
        "properties": {
          "prompt": {"type": "string", "maxLength": 10000, "description": "required, not blank"},
          "negative_prompt": {"type": "string", "description": "honoured with true classifier-free guidance"},
          "true_cfg_scale": {"type": "number", "minimum": 1, "maximum": 20, "description": "default 4 when negative_prompt is given"},
          "num_inference_steps": {"type": "integer", "minimum": 1, "maximum": 50, "default": 20},
          "samples": {"type": "integer", "minimum": 1, "maximum": 4, "default": 2},
          "width": {"type": "integer", "minimum": 64, "maximum": 1536, "default": 1024, "description": "rounded to the nearest multiple of 16"},
          "height": {"type": "integer", "minimum": 64, "maximum": 1536, "default": 1024, "description": "rounded to the nearest multiple of 16"},
          "seed": {"type": "integer", "default": -1, "description": "-1 = random; image i uses seed + i"},
          "direct_link": {"type": "boolean", "description": "download URLs end in a friendly .png name"},
          "server_id": {"type": "string", "description": "pool that must run the request; 'any' or absent = any"},
          "webhook": {"type": "string", "format": "uri", "description": "receives the final status object, signed (Standard Webhooks)"},
          "batch_id": {"type": "string", "maxLength": 128},
          "file_prefix": {"type": "string", "pattern": "^[A-Za-z0-9._-]{0,64}$"},
          "queued_image_urls": {"type": "boolean", "description": "PENDING answers already carry download_urls; they answer 202 until the image exists"}
        }
      },
      "Status": {
        "type": "object", "required": ["status"],
        "properties": {
          "status": {"type": "string", "enum": ["PENDING", "SUCCESS", "FAILURE"]},
          "id": {"type": "string"},
          "state": {"type": "string", "enum": ["queued", "running", "succeeded", "failed", "cancelled"]},
          "download_urls": {"type": "array", "items": {"type": "string"}},
          "seeds": {"type": "array", "items": {"type": "integer"}},
          "width": {"type": "integer"}, "height": {"type": "integer"},
          "num_inference_steps": {"type": "integer"}, "samples": {"type": "integer"},
          "queue_position": {"type": "integer", "description": "requests ahead of this one (0 = next)"},
          "progress": {"type": "object", "properties": {"done": {"type": "integer"}, "total": {"type": "integer"}}},
          "eta_seconds": {"type": "number"},
          "batch_id": {"type": "string"},
          "warnings": {"type": "array", "items": {"type": "string"}},
          "error": {"type": "string"},
          "cancel": {"type": "string", "enum": ["cancelled", "cancel_requested", "already_finished"]}
        }
      }
    },
    "responses": {
      "Failure": {"description": "FAILURE with an error message", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Status"}}}}
    }
  },
  "security": [{"apiKey": []}, {"xApiKey": []}, {"bearer": []}],
  "paths": {
    "/generate/v3": {"post": {
      "summary": "Submit a text-to-image request",
      "requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/GenerateRequest"}}}},
      "responses": {
        "200": {"description": "SUCCESS within the server's wait, else PENDING", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Status"}}}},
        "400": {"$ref": "#/components/responses/Failure"}, "401": {"$ref": "#/components/responses/Failure"},
        "413": {"$ref": "#/components/responses/Failure"}, "429": {"$ref": "#/components/responses/Failure"},
        "503": {"$ref": "#/components/responses/Failure"}}}},
    "/generate/v3/status/{id}": {
      "parameters": [{"name": "id", "in": "path", "required": true, "schema": {"type": "string"}}],
      "get": {"summary": "Poll a request", "responses": {
        "200": {"description": "status", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Status"}}}},
        "401": {"$ref": "#/components/responses/Failure"}, "404": {"$ref": "#/components/responses/Failure"}}},
      "delete": {"summary": "Cancel a request (extension)", "responses": {
        "200": {"description": "status after the cancel, with `cancel`", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Status"}}}},
        "401": {"$ref": "#/components/responses/Failure"}, "404": {"$ref": "#/components/responses/Failure"}}}},
    "/generate/v3/batch/{batch_id}": {
      "parameters": [{"name": "batch_id", "in": "path", "required": true, "schema": {"type": "string"}}],
      "get": {"summary": "List this key's requests of a batch (extension)", "responses": {"200": {"description": "{batch_id, count, requests: [Status]}"}}}},
    "/v3/images/{token}/{name}": {
      "parameters": [{"name": "token", "in": "path", "required": true, "schema": {"type": "string"}},
                     {"name": "name", "in": "path", "required": true, "schema": {"type": "string"}}],
      "get": {"summary": "Download an image (the URL is the capability; no key)", "security": [], "responses": {
        "200": {"description": "PNG", "content": {"image/png": {}}},
        "202": {"description": "not made yet; Retry-After"},
        "404": {"$ref": "#/components/responses/Failure"}}}},
    "/healthz": {"get": {"summary": "Liveness", "security": [], "responses": {"200": {"description": "ok"}}}},
    "/readyz": {"get": {"summary": "Ready when a model is loaded and the store answers", "security": [], "responses": {"200": {"description": "ready"}, "503": {"description": "not ready"}}}},
    "/metrics": {"get": {"summary": "Prometheus text format", "security": [], "responses": {"200": {"description": "metrics"}}}},
    "/openapi.json": {"get": {"summary": "This document", "security": [], "responses": {"200": {"description": "OpenAPI"}}}}
  }
})json";
  return doc;
}

const std::string& playground_page() {
  static const std::string page = R"html(<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>fluxpipe playground</title>
<style>body{font:15px system-ui,sans-serif;max-width:56rem;margin:2rem auto;padding:0 1rem}
label{display:block;margin:.4rem 0}input,textarea{font:inherit;width:100%}textarea{height:5rem}
#out img{max-width:48%;margin:.2rem}#log{white-space:pre-wrap;color:#555}</style></head>
<body><h1>fluxpipe</h1><p>Generate v3 playground. Requests go to this server's <code>POST /generate/v3</code>.</p>
<label>API key <input id="key" type="password" autocomplete="off"></label>
<label>Prompt <textarea id="prompt"></textarea></label>
<label>Width <input id="width" type="number" value="1024"></label>
<label>Height <input id="height" type="number" value="1024"></label>
<label>Steps <input id="steps" type="number" value="4"></label>
<label>Samples <input id="samples" type="number" value="1"></label>
<button id="go">Generate</button><div id="log"></div><div id="out"></div>
<script>
const $ = id => document.getElementById(id);
async function call(method, path, body) {
  const r = await fetch(path, {method, headers: {'API-Key': $('key').value, 'Content-Type': 'application/json'},
                               body: body ? JSON.stringify(body) : undefined});
  return r.json();
}
$('go').onclick = async () => {
  $('out').textContent = ''; $('log').textContent = 'submitting…';
  let s = await call('POST', '/generate/v3', {prompt: $('prompt').value, width: +$('width').value,
    height: +$('height').value, num_inference_steps: +$('steps').value, samples: +$('samples').value});
  while (s.status === 'PENDING') {
    $('log').textContent = s.state + (s.progress ? ` ${s.progress.done}/${s.progress.total}` : '');
    await new Promise(r => setTimeout(r, 1000));
    s = await call('GET', '/generate/v3/status/' + s.id);
  }
  $('log').textContent = s.status === 'SUCCESS' ? 'seeds ' + s.seeds.join(', ') : 'failed: ' + s.error;
  for (const u of s.download_urls || []) { const i = document.createElement('img'); i.src = u; $('out').append(i); }
};
</script></body></html>
)html";
  return page;
}

}  // namespace fluxpipe::server
