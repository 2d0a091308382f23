#!/bin/sh
# One-shot S3 setup, run by the `s3-init` service (minio/mc image) once `s3` is healthy.
# Idempotent: safe to rerun with `docker compose -f infra/compose.yaml run --rm s3-init`.
#
#   1. the evidence bucket, versioned (and created with object lock unless S3_OBJECT_LOCK=off);
#   2. the application's own MinIO user (BODYCAM_S3_ACCESS_KEY / BODYCAM_S3_SECRET_KEY), limited
#      to that bucket and unable to delete object versions: root credentials never reach the app;
#   3. `put` notifications for incoming/ to the webhook target configured on the s3 service.
#
# Input (from compose.yaml): S3_URL MINIO_ROOT_USER MINIO_ROOT_PASSWORD S3_BUCKET
# S3_APP_ACCESS_KEY S3_APP_SECRET_KEY S3_OBJECT_LOCK S3_EVENT_ARN
set -eu

fail() {
    echo "s3-init: $*" >&2
    exit 1
}

case "$MINIO_ROOT_PASSWORD" in
    change-me*) fail "MINIO_ROOT_PASSWORD in infra/.env is still a change-me placeholder" ;;
esac
case "$S3_APP_SECRET_KEY" in
    change-me*) fail "BODYCAM_S3_SECRET_KEY in infra/.env is still a change-me placeholder" ;;
esac
[ "${#S3_APP_SECRET_KEY}" -ge 16 ] || fail "BODYCAM_S3_SECRET_KEY must be at least 16 characters"
[ "$S3_APP_ACCESS_KEY" != "$MINIO_ROOT_USER" ] ||
    fail "BODYCAM_S3_ACCESS_KEY must differ from MINIO_ROOT_USER: the application gets its own user"

mc alias set local "$S3_URL" "$MINIO_ROOT_USER" "$MINIO_ROOT_PASSWORD" >/dev/null

# 1. Bucket. Object lock can only be switched on when a bucket is created; it implies versioning.
if [ "$S3_OBJECT_LOCK" = "on" ]; then
    mc mb --ignore-existing --with-lock "local/$S3_BUCKET"
else
    mc mb --ignore-existing "local/$S3_BUCKET"
fi
mc version enable "local/$S3_BUCKET"
mc version info "local/$S3_BUCKET"

# 2. Application user and policy: read, write and (versioned) delete inside the bucket only.
# No s3:DeleteObjectVersion, no retention or bucket-configuration rights.
policy=/tmp/bodycam-app-policy.json
cat >"$policy" <<EOF
{
  "Version": "2012-10-17",
  "Statement": [
    {
      "Effect": "Allow",
      "Action": ["s3:GetBucketLocation", "s3:ListBucket", "s3:ListBucketMultipartUploads"],
      "Resource": ["arn:aws:s3:::$S3_BUCKET"]
    },
    {
      "Effect": "Allow",
      "Action": [
        "s3:GetObject",
        "s3:PutObject",
        "s3:DeleteObject",
        "s3:AbortMultipartUpload",
        "s3:ListMultipartUploadParts"
      ],
      "Resource": ["arn:aws:s3:::$S3_BUCKET/*"]
    }
  ]
}
EOF
mc admin policy create local bodycam-app "$policy"
mc admin user add local "$S3_APP_ACCESS_KEY" "$S3_APP_SECRET_KEY"
if ! mc admin policy attach local bodycam-app --user "$S3_APP_ACCESS_KEY" 2>/dev/null; then
    # Already attached on a rerun; anything else is an error.
    mc admin user info local "$S3_APP_ACCESS_KEY" | grep -q bodycam-app ||
        fail "could not attach policy bodycam-app to $S3_APP_ACCESS_KEY"
fi

# 3. Notifications. Not fatal: the beat reconciler lists incoming/ periodically, so a missing
# notification delays processing but loses nothing.
if mc event ls "local/$S3_BUCKET" "$S3_EVENT_ARN" 2>/dev/null | grep -q "incoming/"; then
    echo "s3-init: notification for incoming/ already present"
elif mc event add "local/$S3_BUCKET" "$S3_EVENT_ARN" --event put --prefix incoming/; then
    echo "s3-init: notification for incoming/ added"
else
    echo "s3-init: WARNING: could not add the incoming/ notification ($S3_EVENT_ARN);" \
        "uploads are still found by the periodic reconciler. Check the s3 service's" \
        "MINIO_NOTIFY_WEBHOOK_* settings and rerun s3-init." >&2
fi
mc event ls "local/$S3_BUCKET" || true
echo "s3-init: done"
