// Package check tests the deploy files of scripts/deploy with their own
// tools where they are installed: systemd-analyze for the unit and timer, a
// shell for the crontab's retry rule, the Kubernetes batch/v1 API types
// (decoded strictly) for the manifests, and the binary the Dockerfile
// builds, run with the manifests' arguments as the image's user in a root
// holding nothing else. It is a module of its own so that the Kubernetes
// API is a dependency of these tests only, never of audiencematch.
package check
