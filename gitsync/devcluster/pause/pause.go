// pause: the real node's sandbox process. It holds a Pod's namespaces open, reaps the
// zombies a shared process namespace hands it as PID 1, and exits 0 on SIGINT/SIGTERM,
// as registry.k8s.io/pause does. Built static (CGO_ENABLED=0) by gitsync.devcluster.images.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	signals := make(chan os.Signal, 8)
	signal.Notify(signals, syscall.SIGINT, syscall.SIGTERM, syscall.SIGCHLD)
	for sig := range signals {
		if sig != syscall.SIGCHLD {
			os.Exit(0)
		}
		for {
			var status syscall.WaitStatus
			pid, err := syscall.Wait4(-1, &status, syscall.WNOHANG, nil)
			if pid <= 0 || err != nil {
				break
			}
		}
	}
}
