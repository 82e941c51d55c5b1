// SPDX-License-Identifier: Apache-2.0

// Package charonlab runs real strongSwan daemons (charon) for tests: two peers in
// the two network namespaces of a netlab.Lab, with a PSK-authenticated IKE_SA and
// one CHILD_SA whose ESP is UDP-encapsulated, carried by kernel-libipsec (a tun
// device and ESP in userspace), so it works on kernels without ESP.
//
// Each charon runs in its own mount namespace with a private tmpfs on /run, so
// its pid file and default sockets collide with nothing (not with the other peer,
// not with a charon of the host); its configuration, log and VICI socket are in a
// directory of the caller's. The mount namespace, and the tmpfs with it, ends with
// the process.
package charonlab

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"

	govici "github.com/strongswan/govici/vici"

	"github.com/spiwatch/spiwatch/internal/netlab"
)

// Programs and files the lab needs (Debian's strongswan-charon, strongswan-swanctl
// and libcharon-extra-plugins).
var (
	CharonPath = "/usr/lib/ipsec/charon"
	needed     = []string{CharonPath, "/usr/sbin/swanctl", "/usr/lib/ipsec/plugins/libstrongswan-kernel-libipsec.so",
		"/usr/lib/ipsec/plugins/libstrongswan-vici.so", "/dev/net/tun", "/usr/bin/unshare"}
)

// Missing names what the lab needs and this machine lacks; "" when nothing.
func Missing() string {
	var miss []string
	for _, p := range needed {
		if _, err := os.Stat(p); err != nil {
			miss = append(miss, p)
		}
	}
	if len(miss) == 0 {
		return ""
	}
	return strings.Join(miss, ", ") + " (apt-get install strongswan-charon strongswan-swanctl libcharon-extra-plugins)"
}

// Addrs are a lab's addresses: outer on the veth, inner (the tunnelled hosts) on lo.
type Addrs struct {
	Initiator, Responder           netip.Addr // outer: the IKE and ESP-in-UDP addresses
	InitiatorInner, ResponderInner netip.Addr // inner: the traffic selectors
}

// The labs' addresses (documentation ranges), over IPv4 and over IPv6.
var (
	V4 = Addrs{netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("192.0.2.2"),
		netip.MustParseAddr("198.51.100.1"), netip.MustParseAddr("198.51.100.2")}
	V6 = Addrs{netip.MustParseAddr("2001:db8::1"), netip.MustParseAddr("2001:db8::2"),
		netip.MustParseAddr("2001:db8:100::1"), netip.MustParseAddr("2001:db8:100::2")}
)

// Conn and Child are the names of the connection and the CHILD_SA.
const (
	Conn  = "lab"
	Child = "tun"
)

// Peer is one side's configuration.
type Peer struct {
	Local, Remote           netip.Addr // outer addresses
	LocalInner, RemoteInner netip.Addr // traffic selectors
	ID, RemoteID            string
}

// Charon is one running daemon.
type Charon struct {
	NS, Dir, Socket string
	peer            Peer

	mu   sync.Mutex
	cmd  *exec.Cmd
	out  *bytes.Buffer
	done chan struct{}
}

const strongswanConf = `charon {
  load_modular = no
  load = random nonce aes sha1 sha2 hmac gmp kdf kernel-libipsec kernel-netlink socket-default vici
  install_routes = yes
  filelog {
    log {
      path = %[1]s/charon.log
      time_format = %%T
      default = 1
    }
  }
  syslog {
    daemon {
      default = -1
    }
  }
  plugins {
    vici {
      socket = unix://%[1]s/charon.vici
    }
  }
}
swanctl {
  load = random nonce
}
`

const swanctlConf = `connections {
  %[6]s {
    local_addrs = %[1]s
    remote_addrs = %[2]s
    encap = yes
    proposals = aes128-sha256-modp2048
    local {
      auth = psk
      id = %[3]s
    }
    remote {
      auth = psk
      id = %[4]s
    }
    children {
      %[7]s {
        local_ts = %[5]s
        remote_ts = %[8]s
        esp_proposals = aes128-sha256
      }
    }
  }
}
secrets {
  ike-lab {
    id-1 = initiator
    id-2 = responder
    secret = "spiwatch lab only"
  }
}
`

// Start writes peer's configuration to dir and starts charon in namespace ns. It
// returns once charon listens on its VICI socket and has the configuration loaded.
func Start(ns, dir string, peer Peer) (*Charon, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	c := &Charon{NS: ns, Dir: dir, Socket: filepath.Join(dir, "charon.vici"), peer: peer}
	files := map[string]string{
		"strongswan.conf": fmt.Sprintf(strongswanConf, dir),
		"swanctl.conf": fmt.Sprintf(swanctlConf, peer.Local, peer.Remote, peer.ID, peer.RemoteID, peer.LocalInner, Conn, Child,
			peer.RemoteInner),
	}
	for name, text := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(text), 0o600); err != nil {
			return nil, err
		}
	}
	return c, c.Restart()
}

// Restart starts charon again after Kill (or for the first time), with a fresh
// /run and no SAs, and loads the configuration.
func (c *Charon) Restart() error {
	c.mu.Lock()
	if c.cmd != nil {
		c.mu.Unlock()
		return errors.New("charon is already running")
	}
	os.Remove(c.Socket) // left behind by a killed charon
	// ip netns exec enters the namespace; unshare gives a mount namespace whose
	// mounts nobody else sees; exec keeps one process, charon, to kill.
	cmd := netlab.Command(c.NS, "unshare", "--mount", "--propagation", "private", "--",
		"sh", "-c", "mount -t tmpfs -o mode=0755 spiwatch-lab /run && exec "+CharonPath)
	cmd.Env = append(os.Environ(), "STRONGSWAN_CONF="+filepath.Join(c.Dir, "strongswan.conf"))
	out := &bytes.Buffer{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		c.mu.Unlock()
		return fmt.Errorf("starting charon in %s: %w", c.NS, err)
	}
	done := make(chan struct{})
	c.cmd, c.out, c.done = cmd, out, done
	go func() {
		cmd.Wait()
		close(done)
	}()
	c.mu.Unlock()

	deadline := time.Now().Add(10 * time.Second)
	for {
		if s, err := govici.NewSession(govici.WithSocketPath(c.Socket)); err == nil {
			s.Close()
			break
		}
		select {
		case <-done:
			return fmt.Errorf("charon in %s exited at start: %s\n%s", c.NS, out.String(), c.Log())
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			c.Kill()
			return fmt.Errorf("charon in %s: no VICI socket %s after 10s\n%s", c.NS, c.Socket, c.Log())
		}
	}
	_, err := c.Swanctl("--load-all", "--file", filepath.Join(c.Dir, "swanctl.conf"))
	return err
}

// Kill ends charon with SIGKILL, as a crash would: no DELETE reaches the peer.
// Safe to call when it is not running.
func (c *Charon) Kill() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.cmd == nil {
		return nil
	}
	c.cmd.Process.Kill()
	select {
	case <-c.done:
	case <-time.After(10 * time.Second):
		return fmt.Errorf("charon (pid %d) in %s did not exit after SIGKILL", c.cmd.Process.Pid, c.NS)
	}
	c.cmd = nil
	return nil
}

// Swanctl runs swanctl against this charon and returns its output.
func (c *Charon) Swanctl(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	args = append(args, "--uri", "unix://"+c.Socket)
	cmd := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", c.NS, "swanctl"}, args...)...)
	cmd.Env = append(os.Environ(), "STRONGSWAN_CONF="+filepath.Join(c.Dir, "strongswan.conf"))
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("swanctl %s in %s: %v\n%s", strings.Join(args, " "), c.NS, err, out)
	}
	return string(out), nil
}

// Log is charon's log so far.
func (c *Charon) Log() string {
	b, _ := os.ReadFile(filepath.Join(c.Dir, "charon.log"))
	return string(b)
}

// ChildSA is what this charon says about one of its CHILD_SAs.
type ChildSA struct {
	ID, State     string
	SPIIn, SPIOut uint32
}

// ChildSAs lists this charon's CHILD_SAs over VICI, read independently of the
// source under test.
func (c *Charon) ChildSAs() ([]ChildSA, error) {
	s, err := govici.NewSession(govici.WithSocketPath(c.Socket))
	if err != nil {
		return nil, err
	}
	defer s.Close()
	// Not CallStreaming, which can end before the last message: list-sa events
	// all come before the command's response.
	ch := make(chan govici.Event, 64)
	s.NotifyEvents(ch)
	if err := s.Subscribe("list-sa"); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := s.Call(ctx, "list-sas", nil); err != nil {
		return nil, err
	}
	var out []ChildSA
	for len(ch) > 0 {
		m := (<-ch).Message
		for _, ikeName := range m.Keys() {
			ike, _ := m.Get(ikeName).(*govici.Message)
			if ike == nil {
				continue
			}
			children, _ := ike.Get("child-sas").(*govici.Message)
			if children == nil {
				continue
			}
			for _, k := range children.Keys() {
				ch := children.Get(k).(*govici.Message)
				var in, outSPI uint32
				fmt.Sscanf(fmt.Sprint(ch.Get("spi-in")), "%x", &in)
				fmt.Sscanf(fmt.Sprint(ch.Get("spi-out")), "%x", &outSPI)
				out = append(out, ChildSA{ID: fmt.Sprint(ch.Get("uniqueid")), State: fmt.Sprint(ch.Get("state")), SPIIn: in, SPIOut: outSPI})
			}
		}
	}
	return out, nil
}

// Installed is the CHILD_SA in state INSTALLED; an error unless there is exactly one.
func (c *Charon) Installed() (ChildSA, error) {
	all, err := c.ChildSAs()
	if err != nil {
		return ChildSA{}, err
	}
	var found []ChildSA
	for _, ch := range all {
		if ch.State == "INSTALLED" {
			found = append(found, ch)
		}
	}
	if len(found) != 1 {
		return ChildSA{}, fmt.Errorf("charon in %s: want one INSTALLED CHILD_SA, have %+v", c.NS, all)
	}
	return found[0], nil
}

// Tunnel is two charons with an established CHILD_SA between them.
type Tunnel struct {
	Initiator, Responder *Charon
	Addrs                Addrs
}

// NewTunnel addresses lab with a (outer addresses on the veth, inner ones on lo;
// over IPv6 it turns IPv6 on, which netlab leaves off), starts a charon on each
// side with its files under dir and initiates the CHILD_SA from the sender's side
// (lab.NSA) to the receiver's (lab.NSB). Close stops both.
func NewTunnel(lab *netlab.Lab, dir string, a Addrs) (*Tunnel, error) {
	for _, s := range []struct {
		ns, dev      string
		outer, inner netip.Addr
	}{{lab.NSA, lab.Sender, a.Initiator, a.InitiatorInner}, {lab.NSB, lab.Receiver, a.Responder, a.ResponderInner}} {
		steps := [][]string{
			{"-n", s.ns, "addr", "add", netip.PrefixFrom(s.outer, s.outer.BitLen()-8).String(), "dev", s.dev},
			{"-n", s.ns, "addr", "add", netip.PrefixFrom(s.inner, s.inner.BitLen()).String(), "dev", "lo"},
		}
		if s.outer.Is6() {
			for i := range steps {
				steps[i] = append(steps[i], "nodad") // usable at once
			}
			steps = append([][]string{
				{"netns", "exec", s.ns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=0"},
				{"netns", "exec", s.ns, "sysctl", "-qw", "net.ipv6.conf." + s.dev + ".disable_ipv6=0"},
				{"netns", "exec", s.ns, "sysctl", "-qw", "net.ipv6.conf.lo.disable_ipv6=0"},
			}, steps...)
		}
		for _, args := range steps {
			if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
				return nil, fmt.Errorf("ip %s: %v: %s", strings.Join(args, " "), err, out)
			}
		}
	}
	t := &Tunnel{Addrs: a}
	var err error
	if t.Responder, err = Start(lab.NSB, filepath.Join(dir, "responder"), Peer{a.Responder, a.Initiator, a.ResponderInner, a.InitiatorInner, "responder", "initiator"}); err != nil {
		return nil, err
	}
	if t.Initiator, err = Start(lab.NSA, filepath.Join(dir, "initiator"), Peer{a.Initiator, a.Responder, a.InitiatorInner, a.ResponderInner, "initiator", "responder"}); err != nil {
		t.Close()
		return nil, err
	}
	if _, err := t.Initiator.Swanctl("--initiate", "--child", Child); err != nil {
		err = fmt.Errorf("%w\ninitiator's log:\n%s\nresponder's log:\n%s", err, t.Initiator.Log(), t.Responder.Log())
		t.Close()
		return nil, err
	}
	return t, nil
}

// Close kills both charons.
func (t *Tunnel) Close() error {
	var errs []error
	for _, c := range []*Charon{t.Initiator, t.Responder} {
		if c != nil {
			errs = append(errs, c.Kill())
		}
	}
	return errors.Join(errs...)
}

// Send sends a small UDP datagram from the initiator's inner address to the
// responder's through the tunnel every interval until ctx ends; it returns at once.
// Send errors (an ICMP error from the far end, a tunnel that is down) are ignored:
// the point is the ESP the initiator keeps sending.
func (t *Tunnel) Send(ctx context.Context, interval time.Duration) error {
	var conn *net.UDPConn
	err := netlab.In(t.Initiator.NS, func() error {
		var err error
		conn, err = net.ListenUDP("udp", &net.UDPAddr{IP: t.Addrs.InitiatorInner.AsSlice()})
		return err
	})
	if err != nil {
		return fmt.Errorf("opening a UDP socket on %s in %s: %w", t.Addrs.InitiatorInner, t.Initiator.NS, err)
	}
	to := &net.UDPAddr{IP: t.Addrs.ResponderInner.AsSlice(), Port: 9} // discard
	go func() {
		defer conn.Close()
		tick := time.NewTicker(interval)
		defer tick.Stop()
		for {
			conn.WriteToUDP([]byte("spiwatch lab"), to)
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
		}
	}()
	return nil
}
