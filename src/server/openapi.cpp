// The OpenAPI 3.0 document served at /openapi.json.
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
      "parameters": [
        {"name": "Idempotency-Key", "in": "header", "required": false, "schema": {"type": "string", "maxLength": 255},
         "description": "The same key and body within 24 h answer the same request; the same key with another body is a 409"},
        {"name": "Prefer", "in": "header", "required": false, "schema": {"type": "string", "example": "respond-async"},
         "description": "respond-async: answer PENDING at once instead of waiting up to the server's sync wait"}],
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

}  // namespace fluxpipe::server
