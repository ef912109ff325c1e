// fluxpipe server: images in an S3-compatible object store (AWS S3, MinIO, Ceph RGW, s3rver).
//
// One object per image, key <prefix>/<token>/<file name>; a PUT is atomic on every S3, so a
// reader never sees half an image. Requests are signed with SigV4 (sigv4.h) and sent with
// libcurl, one handle per call. Download URLs stay the server's own (the API node streams the
// object): the bucket can stay private, the capability URL keeps working when credentials
// rotate, and clients need no route to the object store.
// Thread-safety: thread-safe.
#pragma once

#include <memory>
#include <string>

#include "server/images.h"
#include "server/sigv4.h"

namespace fluxpipe::server {

struct S3Location {
  std::string bucket;
  std::string prefix;          // without leading or trailing '/'; may be empty
  std::string endpoint;        // scheme://host[:port]; default https://s3.<region>.amazonaws.com
  bool path_style = false;     // endpoint/bucket/key instead of bucket.endpoint/key
  AwsCredentials credentials;
  int timeout_ms = 30000;
};

// Parses "s3://bucket/prefix" and takes the credentials and region from the environment
// (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_REGION or
// AWS_DEFAULT_REGION, default us-east-1). UserError naming what is missing.
S3Location s3_location_from(const std::string& url, const std::string& endpoint, bool path_style);

std::unique_ptr<ImageStore> open_s3_image_store(const S3Location& location);

}  // namespace fluxpipe::server
