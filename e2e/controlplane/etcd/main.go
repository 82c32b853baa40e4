// Command etcd is upstream etcd's server entry point, built from the Go module
// proxy at the version kube-apiserver itself depends on.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
