// SPDX-License-Identifier: Apache-2.0

// Command spiwatch-demo (make demo) shows spiwatch on realistic traffic: it builds
// a lab of two network namespaces joined by a veth pair, attaches spiwatch to one
// end and sends, from the other, a few healthy SAs, a peer still sending on an SA
// the gateway forgot, IKE and NAT keepalives, for about 20 seconds. Everything it
// created is removed when it ends, also on Ctrl-C.
package main

import (
	"bufio"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/spiwatch/spiwatch/internal/netlab"
)

// The gateway (203.0.113.1) knows three SAs; 198.51.100.7 still sends on 0xdeadbeef,
// an SA deleted on the gateway after a restart; one client sends a reserved SPI.
const known = `# SAs the demo gateway has installed
0xc0000001@203.0.113.1
0xc0000002@203.0.113.1
0xc0000003@203.0.113.1
`

// Per stream: count= is frames per second during the demo.
var mix = []string{
	"esp spi=0xc0000001 src=198.51.100.1 dst=203.0.113.1 len=1200 count=4000 seqinc=true",
	"esp spi=0xc0000002 src=198.51.100.2 dst=203.0.113.1 len=400 count=1500 seqinc=true",
	"esp-in-udp spi=0xc0000003 src=198.51.100.3 dst=203.0.113.1 sport=49152 dport=4500 len=300 count=800 seqinc=true",
	"esp spi=0xdeadbeef src=198.51.100.7 dst=203.0.113.1 len=200 count=250 seq=48000 seqinc=true",
	"esp-in-udp spi=0x00000042 src=198.51.100.9 dst=203.0.113.1 sport=4500 dport=4500 count=5",
	"ike src=198.51.100.7 dst=203.0.113.1 count=2",
	"ike src=198.51.100.3 dst=203.0.113.1 sport=49152 dport=4500 marker=true count=1",
	"keepalive src=198.51.100.3 dst=203.0.113.1 sport=49152 dport=4500 count=1",
	"tcp src=198.51.100.50 dst=203.0.113.1 count=300",
}

func main() {
	spiwatch := flag.String("spiwatch", "bin/spiwatch", "spiwatch binary")
	gen := flag.String("gen", "bin/spiwatch-gen", "generator binary")
	duration := flag.Duration("duration", 20*time.Second, "how long to send traffic")
	flag.Parse()
	if err := run(*spiwatch, *gen, *duration); err != nil {
		fmt.Fprintf(os.Stderr, "spiwatch-demo: %v\n", err)
		os.Exit(1)
	}
}

func run(spiwatch, gen string, duration time.Duration) error {
	if os.Geteuid() != 0 {
		return fmt.Errorf("the demo needs root (network namespaces and XDP): run sudo make demo")
	}
	for _, b := range []*string{&spiwatch, &gen} {
		abs, err := filepath.Abs(*b)
		if err != nil {
			return err
		}
		*b = abs
	}
	// Ctrl-C ends the demo through the normal path, so the lab is removed: caught
	// from before the lab exists, or a Ctrl-C while it is made would leave it.
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
	lab, err := netlab.New("swdemo")
	if err != nil {
		return err
	}
	defer lab.Close()

	dir, err := os.MkdirTemp("", "spiwatch-demo")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	knownFile := filepath.Join(dir, "known")
	if err := os.WriteFile(knownFile, []byte(known), 0o600); err != nil {
		return err
	}

	fmt.Printf("lab: namespaces %s (generator, %s) and %s (gateway, %s)\n", lab.NSA, lab.Sender, lab.NSB, lab.Receiver)
	fmt.Printf("gateway knows: %s\n", strings.Join(strings.Fields(strings.ReplaceAll(known[strings.Index(known, "\n")+1:], "\n", " ")), ", "))
	fmt.Printf("running: spiwatch -i %s --known-file %s --interval 2s --top 5\n\n", lab.Receiver, knownFile)

	// On a terminal spiwatch shows its live view (q quits it early); otherwise it
	// prints a report every 2 s.
	sw := netlab.Command(lab.NSB, spiwatch, "-i", lab.Receiver, "--known-file", knownFile, "--interval", "2s", "--top", "5")
	sw.Stdin, sw.Stdout = os.Stdin, os.Stdout
	stderr, err := sw.StderrPipe()
	if err != nil {
		return err
	}
	if err := sw.Start(); err != nil {
		return err
	}
	swDone := make(chan error, 1)
	stop := func() {
		sw.Process.Signal(syscall.SIGINT)
		<-swDone
	}
	ready := make(chan struct{})
	go func() {
		defer func() { swDone <- sw.Wait() }()
		sc := bufio.NewScanner(stderr)
		once := false
		for sc.Scan() {
			fmt.Fprintln(os.Stderr, sc.Text())
			if !once && strings.Contains(sc.Text(), "reporting every") {
				once = true
				close(ready)
			}
		}
	}()
	select {
	case <-ready:
	case <-time.After(15 * time.Second):
		stop()
		return fmt.Errorf("spiwatch did not start")
	}

	args := []string{"-i", lab.Sender, "--duration", duration.String()}
	for _, m := range mix {
		args = append(args, "--send", m)
	}
	g := netlab.Command(lab.NSA, gen, args...)
	g.Stdout, g.Stderr = nil, os.Stderr
	if err := g.Start(); err != nil {
		return err
	}
	done := make(chan error, 1)
	go func() { done <- g.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			stop()
			return fmt.Errorf("generator: %w", err)
		}
		time.Sleep(2500 * time.Millisecond) // one more report after the traffic stops
	case <-sig:
		g.Process.Signal(syscall.SIGINT)
		<-done
	case <-swDone: // q in the live view
		swDone <- nil
		g.Process.Signal(syscall.SIGINT)
		<-done
	}
	stop()
	fmt.Println("demo done: spiwatch detached; removing the lab")
	return nil
}
