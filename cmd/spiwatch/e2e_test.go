// SPDX-License-Identifier: Apache-2.0

package main

import (
	"bufio"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/spiwatch/spiwatch/internal/classify"
	"github.com/spiwatch/spiwatch/internal/netlab"
	"github.com/spiwatch/spiwatch/internal/testenv"
	"github.com/spiwatch/spiwatch/internal/trafficgen"
	"github.com/spiwatch/spiwatch/maps"
)

// The end-to-end mix: healthy SAs, a forgotten SPI, reserved SPIs, IKE,
// keepalives, fragments, other traffic, IPv6, VLANs and a small flood.
var e2eMix = []string{
	"esp spi=0x1000 src=198.51.100.1 dst=203.0.113.1 count=3000",
	"esp-in-udp spi=0x2000 src=198.51.100.2 dst=203.0.113.1 sport=4500 dport=4500 count=2000",
	"esp spi=0xdeadbeef src=198.51.100.3 dst=203.0.113.1 count=1500",
	"esp-in-udp spi=0xbad0 src=198.51.100.4 dst=203.0.113.1 sport=31000 dport=4500 count=700",
	"esp spi=7 src=198.51.100.5 dst=203.0.113.1 count=30",
	"esp spi=0x3000 src=2001:db8::1 dst=2001:db8::2 vlan=10,20 count=400",
	"esp spi=0x3001 src=2001:db8::1 dst=2001:db8::2 count=50",
	"ike src=198.51.100.1 dst=203.0.113.1 count=40",
	"ike src=198.51.100.2 dst=203.0.113.1 sport=4500 dport=4500 marker=true count=25",
	"keepalive src=198.51.100.2 dst=203.0.113.1 count=12",
	"fragment src=198.51.100.1 dst=203.0.113.1 count=9",
	"tcp src=198.51.100.9 dst=203.0.113.1 count=333",
	"udp src=198.51.100.9 dst=203.0.113.1 count=111",
	"esp spi=0x100000 spis=50 srcs=5 src=192.0.2.100 dst=203.0.113.1 count=1000",
}

var e2eKnown = []string{"--known-spi", "0x1000", "--known-spi", "0x2000@203.0.113.1", "--known-spi", "0x3000@2001:db8::2"}

// output mirrors the JSON report (docs/OUTPUT.md) as far as the test reads it.
type output struct {
	Total   struct{ Packets uint64 } `json:"total"`
	Classes []struct {
		Class    string `json:"class"`
		Packets  uint64 `json:"packets"`
		Outcomes map[string]struct {
			Packets uint64 `json:"packets"`
		} `json:"outcomes"`
	} `json:"classes"`
	Interfaces []struct {
		Name string `json:"name"`
		Mode string `json:"mode"`
	} `json:"interfaces"`
	UnknownTable struct {
		Entries   int    `json:"entries"`
		Inserts   uint64 `json:"inserts"`
		Evictions uint64 `json:"evictions"`
	} `json:"unknown_table"`
	UnknownByVerdict map[string]uint64 `json:"unknown_by_verdict"`
	UnknownSPIs      []struct {
		SPI       string `json:"spi"`
		Src       string `json:"src"`
		Sport     uint16 `json:"sport"`
		Dst       string `json:"dst"`
		Dport     uint16 `json:"dport"`
		Interface string `json:"interface"`
		Packets   uint64 `json:"packets"`
		Verdict   string `json:"verdict"`
	} `json:"unknown_spis"`
	KnownSAs []struct {
		SPI     string   `json:"spi"`
		Dst     string   `json:"dst"`
		Packets uint64   `json:"packets"`
		From    []string `json:"from"`
	} `json:"known_sas"`
}

type rowKey struct {
	spi, src, dst string
	sport, dport  uint16
}

// expectation is what the receiver must count for a mix, computed frame by frame
// with the Go reference classifier.
type expectation struct {
	total     uint64
	perClass  map[string]uint64 // "class" or "class/outcome"
	unknown   map[rowKey]uint64
	known     map[string]uint64 // "spi@dst"
	delivered map[string]uint64 // with --action drop: class/outcome of frames passed up
}

func expect(t *testing.T, mix []string, known []string, drop bool) expectation {
	t.Helper()
	set := classify.SASet{}
	for i := 1; i < len(known); i += 2 {
		sa, err := parseKnown(known[i])
		if err != nil {
			t.Fatal(err)
		}
		set.Add(sa.SPI, sa.Dst)
	}
	e := expectation{perClass: map[string]uint64{}, unknown: map[rowKey]uint64{}, known: map[string]uint64{}, delivered: map[string]uint64{}}
	for _, s := range mix {
		st, err := trafficgen.ParseStream(s)
		if err != nil {
			t.Fatal(err)
		}
		v, err := st.Vary()
		if err != nil {
			t.Fatal(err)
		}
		base := st.Build()
		for i := 0; i < st.Count; i++ {
			f := base
			if v != (trafficgen.Vary{}) {
				f = v.Apply(base, uint64(i))
			}
			r := classify.Classify(f, nil)
			o := classify.OutcomeOf(r, set)
			e.total++
			e.perClass[r.Class.String()]++
			if r.HasSPI {
				e.perClass[r.Class.String()+"/"+o.String()]++
			}
			switch o {
			case classify.OutcomeUnknown, classify.OutcomeReserved:
				e.unknown[rowKey{fmt.Sprintf("0x%08x", r.SPI), r.Src.String(), r.Dst.String(), r.SrcPort, r.DstPort}]++
			case classify.OutcomeKnown:
				dst := r.Dst.String()
				if _, ok := set[classify.MakeSAKey(r.SPI, r.Dst)]; !ok {
					dst = "any"
				}
				e.known[fmt.Sprintf("0x%08x@%s", r.SPI, dst)]++
			}
			if classify.Verdict(o, drop) == classify.XDPPass {
				e.delivered[r.Class.String()+"/"+o.String()]++
			}
		}
	}
	return e
}

func parseKnown(s string) (maps.SA, error) {
	spi, dst, _ := strings.Cut(s, "@")
	var sa maps.SA
	if _, err := fmt.Sscanf(spi, "0x%x", &sa.SPI); err != nil {
		return sa, err
	}
	if dst != "" {
		a, err := netip.ParseAddr(dst)
		sa.Dst = a
		return sa, err
	}
	return sa, nil
}

// buildBinaries compiles spiwatch and spiwatch-gen once per test binary.
func buildBinaries(t *testing.T) (spiwatch, gen string) {
	t.Helper()
	binOnce.Do(func() {
		binDir, binErr = os.MkdirTemp("", "spiwatch-test-bin")
		if binErr != nil {
			return
		}
		for bin, pkg := range map[string]string{"spiwatch": ".", "spiwatch-gen": "../spiwatch-gen"} {
			build := exec.Command("go", "build", "-o", filepath.Join(binDir, bin), pkg)
			build.Env = append(os.Environ(), "CGO_ENABLED=0") // as make build: privileges can be dropped
			out, err := build.CombinedOutput()
			if err != nil {
				binErr = fmt.Errorf("building %s: %v\n%s", pkg, err, out)
				return
			}
		}
	})
	if binErr != nil {
		t.Fatal(binErr)
	}
	return filepath.Join(binDir, "spiwatch"), filepath.Join(binDir, "spiwatch-gen")
}

var (
	binOnce sync.Once
	binDir  string
	binErr  error
)

func TestMain(m *testing.M) {
	code := m.Run()
	if binDir != "" {
		os.RemoveAll(binDir)
	}
	os.Exit(code)
}

// newLab makes a namespace lab for one test and removes it afterwards.
func newLab(t *testing.T, prefix string) *netlab.Lab {
	t.Helper()
	lab, err := netlab.New(prefix)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { lab.Close() })
	return lab
}

// syncBuilder is a strings.Builder for one writer goroutine and readers.
type syncBuilder struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuilder) WriteString(x string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.b.WriteString(x)
}

func (s *syncBuilder) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// waitStderr waits a little for text on spiwatch's stderr, which arrives on its own
// pipe, apart from the reports.
func (s *started) waitStderr(text string) bool {
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if strings.Contains(s.stderr.String(), text) {
			return true
		}
	}
	return false
}

// started is a running spiwatch with its output.
type started struct {
	cmd    *exec.Cmd
	lines  chan string
	stderr *syncBuilder
	done   chan error
}

func startSpiwatch(t *testing.T, bin, ns string, args ...string) *started {
	t.Helper()
	return startCmd(t, netlab.Command(ns, bin, args...))
}

// startCmd starts cmd (a spiwatch command line) and waits until it reports.
func startCmd(t *testing.T, cmd *exec.Cmd) *started {
	t.Helper()
	s := &started{cmd: cmd, lines: make(chan string, 1024), stderr: &syncBuilder{}, done: make(chan error, 1)}
	stdout, err := s.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	errPipe, err := s.cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := s.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if s.cmd.ProcessState == nil {
			s.cmd.Process.Kill()
			<-s.done
		}
	})
	ready := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(errPipe)
		once := false
		for sc.Scan() {
			s.stderr.WriteString(sc.Text() + "\n")
			if !once && strings.Contains(sc.Text(), "reporting every") {
				once = true
				close(ready)
			}
		}
	}()
	go func() {
		sc := bufio.NewScanner(stdout)
		sc.Buffer(make([]byte, 1<<20), 64<<20)
		for sc.Scan() {
			s.lines <- sc.Text()
		}
		close(s.lines)
		s.done <- s.cmd.Wait()
	}()
	select {
	case <-ready:
	case <-time.After(20 * time.Second):
		t.Fatalf("spiwatch did not start: %s", s.stderr)
	}
	return s
}

// stop sends SIGINT and returns the last report.
func (s *started) stop(t *testing.T) output {
	t.Helper()
	// ip netns exec runs spiwatch in its own process (exec, no fork): signal it.
	if err := s.cmd.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	var last string
	timeout := time.After(15 * time.Second)
	for {
		select {
		case l, ok := <-s.lines:
			if !ok {
				if err := <-s.done; err != nil {
					t.Fatalf("spiwatch exited with %v: %s", err, s.stderr)
				}
				var o output
				if err := json.Unmarshal([]byte(last), &o); err != nil {
					t.Fatalf("last report %q: %v", last, err)
				}
				return o
			}
			last = l
		case <-timeout:
			t.Fatalf("spiwatch did not stop on SIGINT: %s", s.stderr)
		}
	}
}

// waitTotal waits until a report shows total packets (all frames arrived).
func (s *started) waitTotal(t *testing.T, total uint64) {
	t.Helper()
	timeout := time.After(30 * time.Second)
	for {
		select {
		case l, ok := <-s.lines:
			if !ok {
				t.Fatalf("spiwatch exited early: %s", s.stderr)
			}
			var o output
			if err := json.Unmarshal([]byte(l), &o); err != nil {
				t.Fatalf("report %q: %v", l, err)
			}
			if o.Total.Packets >= total {
				return
			}
		case <-timeout:
			t.Fatalf("reports never reached %d packets: %s", total, s.stderr)
		}
	}
}

func runGen(t *testing.T, bin, ns, iface string, mix []string) {
	t.Helper()
	args := []string{"-i", iface}
	for _, s := range mix {
		args = append(args, "--send", s)
	}
	out, err := netlab.Command(ns, bin, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("generator: %v\n%s", err, out)
	}
}

func checkReport(t *testing.T, o output, e expectation, iface string) {
	t.Helper()
	if o.Total.Packets != e.total {
		t.Errorf("total %d packets, sent %d", o.Total.Packets, e.total)
	}
	got := map[string]uint64{}
	for _, c := range o.Classes {
		got[c.Class] = c.Packets
		for oc, n := range c.Outcomes {
			if n.Packets > 0 {
				got[c.Class+"/"+oc] = n.Packets
			}
		}
	}
	for k, v := range got {
		if v != 0 && e.perClass[k] != v {
			t.Errorf("%s: %d packets, want %d", k, v, e.perClass[k])
		}
	}
	for k, v := range e.perClass {
		if got[k] != v {
			t.Errorf("%s: %d packets, want %d", k, got[k], v)
		}
	}
	rows := map[rowKey]uint64{}
	for _, u := range o.UnknownSPIs {
		if u.Interface != iface {
			t.Errorf("unknown row %+v on interface %q, want %s", u, u.Interface, iface)
		}
		rows[rowKey{u.SPI, u.Src, u.Dst, u.Sport, u.Dport}] = u.Packets
	}
	if len(rows) != len(e.unknown) {
		t.Errorf("%d unknown rows, want %d", len(rows), len(e.unknown))
	}
	for k, v := range e.unknown {
		if rows[k] != v {
			t.Errorf("unknown %+v: %d packets, want %d", k, rows[k], v)
		}
	}
	if o.UnknownTable.Entries != len(e.unknown) || o.UnknownTable.Evictions != 0 {
		t.Errorf("unknown table %+v, want %d entries and no evictions", o.UnknownTable, len(e.unknown))
	}
	known := map[string]uint64{}
	for _, k := range o.KnownSAs {
		known[k.SPI+"@"+k.Dst] = k.Packets
	}
	for k, v := range e.known {
		if known[k] != v {
			t.Errorf("known SA %s: %d packets, want %d", k, known[k], v)
		}
	}
}

func xdpAttached(t *testing.T, ns, iface string) bool {
	t.Helper()
	var attached bool
	err := netlab.In(ns, func() error {
		l, err := netlink.LinkByName(iface)
		if err != nil {
			return err
		}
		attached = l.Attrs().Xdp != nil && l.Attrs().Xdp.Attached
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return attached
}

// TestEndToEnd runs the real binary on one end of a veth pair, natively attached,
// while the generator sends a known mix from the other end: the JSON report must
// show exactly what was sent, per class, outcome, unknown SPI and known SA.
func TestEndToEnd(t *testing.T) {
	testenv.RequireNetns(t)
	spiwatch, gen := buildBinaries(t)
	for _, mode := range []string{"native", "generic"} {
		t.Run(mode, func(t *testing.T) {
			lab := newLab(t, "swe2e")
			args := append([]string{"-i", lab.Receiver, "--xdp-mode", mode, "--json", "--interval", "100ms", "--top", "0"}, e2eKnown...)
			s := startSpiwatch(t, spiwatch, lab.NSB, args...)
			if !xdpAttached(t, lab.NSB, lab.Receiver) {
				t.Fatal("spiwatch says it is watching, but no XDP program is attached")
			}
			e := expect(t, e2eMix, e2eKnown, false)
			runGen(t, gen, lab.NSA, lab.Sender, e2eMix)
			s.waitTotal(t, e.total)
			o := s.stop(t)
			if len(o.Interfaces) != 1 || o.Interfaces[0].Mode != mode {
				t.Errorf("interfaces %+v, want one in %s mode", o.Interfaces, mode)
			}
			checkReport(t, o, e, lab.Receiver)
			for _, k := range o.KnownSAs {
				if !slices.Equal(k.From, []string{"--known-spi"}) {
					t.Errorf("known SA %s@%s from %q, want --known-spi", k.SPI, k.Dst, k.From)
				}
			}
			if xdpAttached(t, lab.NSB, lab.Receiver) {
				t.Error("XDP program still attached after spiwatch exited")
			}
			// Without --known-from: xfrm where the kernel has ESP, else said once why not.
			notice := strings.Count(s.stderr.String(), "spiwatch: not following xfrm: ")
			if why := xfrmAvailable(); why != nil && notice != 1 {
				t.Errorf("the kernel cannot hold ESP (%v): stderr says so %d times, want once: %s", why, notice, s.stderr)
			} else if why == nil && notice != 0 {
				t.Errorf("the kernel has ESP, yet stderr says xfrm is not followed: %s", s.stderr)
			}
		})
	}
}

// TestEndToEndDrop: with --action drop, unknown-SPI packets are dropped in XDP and
// everything else reaches the stack, which a packet socket on the receiver counts.
func TestEndToEndDrop(t *testing.T) {
	testenv.RequireNetns(t)
	spiwatch, gen := buildBinaries(t)
	lab := newLab(t, "swdrop")
	delivered := listen(t, lab.NSB, lab.Receiver)
	args := append([]string{"-i", lab.Receiver, "--action", "drop", "--json", "--interval", "100ms", "--top", "0"}, e2eKnown...)
	s := startSpiwatch(t, spiwatch, lab.NSB, args...)
	e := expect(t, e2eMix, e2eKnown, true)
	runGen(t, gen, lab.NSA, lab.Sender, e2eMix)
	s.waitTotal(t, e.total)
	o := s.stop(t)
	checkReport(t, o, e, lab.Receiver) // dropped packets are still counted
	got := delivered()
	for k, v := range e.delivered {
		if got[k] != v {
			t.Errorf("delivered %s: %d, want %d", k, got[k], v)
		}
	}
	for k, v := range got {
		if e.delivered[k] == 0 {
			t.Errorf("delivered %d frames of %s, want none", v, k)
		}
	}
	if got["esp/unknown"]+got["esp-in-udp/unknown"] != 0 || e.delivered["esp/known"] == 0 {
		t.Errorf("delivered %v: unknown SPIs must be dropped and the rest passed", got)
	}
}

// listen opens a packet socket on iface inside ns and returns a function that
// stops it and counts what arrived by class/outcome (known SAs as in e2eKnown).
func listen(t *testing.T, ns, iface string) func() map[string]uint64 {
	t.Helper()
	var fd int
	err := netlab.In(ns, func() error {
		ifc, err := net.InterfaceByName(iface)
		if err != nil {
			return err
		}
		proto := int(htons(unix.ETH_P_ALL))
		fd, err = unix.Socket(unix.AF_PACKET, unix.SOCK_RAW, proto)
		if err != nil {
			return err
		}
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 256<<20); err != nil {
			return err
		}
		// A timeout lets the reader notice the end: closing does not wake it.
		tv := unix.NsecToTimeval((100 * time.Millisecond).Nanoseconds())
		if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
			return err
		}
		return unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: uint16(proto), Ifindex: ifc.Index})
	})
	if err != nil {
		t.Fatalf("packet socket on %s: %v", iface, err)
	}
	set := classify.SASet{}
	for i := 1; i < len(e2eKnown); i += 2 {
		sa, _ := parseKnown(e2eKnown[i])
		set.Add(sa.SPI, sa.Dst)
	}
	counts := map[string]uint64{}
	done := make(chan struct{})
	var stopping atomic.Bool
	go func() {
		defer close(done)
		buf := make([]byte, 65536)
		for {
			n, _, err := unix.Recvfrom(fd, buf, 0)
			if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
				if stopping.Load() {
					return
				}
				continue
			}
			if err != nil {
				t.Errorf("reading packet socket: %v", err)
				return
			}
			r := classify.Classify(buf[:n], nil)
			counts[r.Class.String()+"/"+classify.OutcomeOf(r, set).String()]++
		}
	}()
	return func() map[string]uint64 {
		time.Sleep(300 * time.Millisecond) // let the last frames reach the socket
		stopping.Store(true)
		<-done
		// The socket must not have dropped anything, or the counts mean nothing.
		st, err := unix.GetsockoptTpacketStats(fd, unix.SOL_PACKET, unix.PACKET_STATISTICS)
		if err != nil || st.Drops != 0 {
			t.Fatalf("packet socket statistics %+v, %v: it dropped frames", st, err)
		}
		unix.Close(fd)
		return counts
	}
}

func htons(v uint16) uint16 {
	var b [2]byte
	binary.BigEndian.PutUint16(b[:], v)
	return *(*uint16)(unsafe.Pointer(&b[0]))
}

// TestSignalsDetach: SIGTERM, like SIGINT, ends spiwatch with status 0 and a last
// report, and leaves no XDP program behind.
func TestSignalsDetach(t *testing.T) {
	testenv.RequireNetns(t)
	spiwatch, _ := buildBinaries(t)
	lab := newLab(t, "swsig")
	s := startSpiwatch(t, spiwatch, lab.NSB, "-i", lab.Receiver, "--json", "--interval", "1h")
	if !xdpAttached(t, lab.NSB, lab.Receiver) {
		t.Fatal("not attached")
	}
	if err := s.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	var last string
	for l := range s.lines {
		last = l
	}
	if err := <-s.done; err != nil {
		t.Fatalf("exit after SIGTERM: %v: %s", err, s.stderr)
	}
	var o output
	if err := json.Unmarshal([]byte(last), &o); err != nil {
		t.Fatalf("no final report after SIGTERM: %q: %v", last, err)
	}
	if xdpAttached(t, lab.NSB, lab.Receiver) {
		t.Error("XDP program still attached after SIGTERM")
	}
}

// TestClosedStdout: spiwatch --json | head -1 must end spiwatch cleanly (status 0,
// detached) when head closes the pipe, not kill it with SIGPIPE.
func TestClosedStdout(t *testing.T) {
	testenv.RequireNetns(t)
	spiwatch, _ := buildBinaries(t)
	lab := newLab(t, "swpipe")
	cmd := netlab.Command(lab.NSB, spiwatch, "-i", lab.Receiver, "--json", "--interval", "50ms")
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil || !strings.HasPrefix(line, "{") {
		t.Fatalf("first line %q: %v", line, err)
	}
	stdout.Close()
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("spiwatch ended with %v after its reader went away: %s", err, stderr.String())
		}
	case <-time.After(10 * time.Second):
		cmd.Process.Kill()
		t.Fatal("spiwatch kept running after its reader went away")
	}
	if xdpAttached(t, lab.NSB, lab.Receiver) {
		t.Error("XDP program still attached")
	}
}

// TestInterfaceDeleted: when one watched interface is deleted, spiwatch says so on
// stderr, in every report and in its metrics, keeps counting on the other (frames
// sent into it afterwards are counted), and ends with status 1 once nothing is left
// to watch.
func TestInterfaceDeleted(t *testing.T) {
	testenv.RequireNetns(t)
	spiwatch, gen := buildBinaries(t)
	lab := newLab(t, "swdel")
	// A second watched interface in the receiver's namespace: another veth pair
	// (this kernel has no dummy devices), removed with the namespace.
	if out, err := exec.Command("ip", "-n", lab.NSB, "link", "add", "swdummy0", "type", "veth", "peer", "name", "swdummy1").CombinedOutput(); err != nil {
		t.Fatalf("adding a second interface: %v: %s", err, out)
	}
	for _, dev := range []string{"swdummy0", "swdummy1"} {
		if out, err := exec.Command("ip", "-n", lab.NSB, "link", "set", dev, "up").CombinedOutput(); err != nil {
			t.Fatalf("setting %s up: %v: %s", dev, err, out)
		}
	}
	s := startSpiwatch(t, spiwatch, lab.NSB, "-i", lab.Receiver, "-i", "swdummy0", "--json", "--interval", "100ms", "--metrics-addr", ":9464")
	runGen(t, gen, lab.NSA, lab.Sender, []string{"esp spi=0xdead count=50"})
	s.waitTotal(t, 50)

	if out, err := exec.Command("ip", "-n", lab.NSB, "link", "del", lab.Receiver).CombinedOutput(); err != nil {
		t.Fatalf("deleting %s: %v: %s", lab.Receiver, err, out)
	}
	// Reports go on, saying the receiver is gone and keeping its counts.
	r := s.waitReport(t, lab.Receiver+" marked deleted", func(r linkReport) bool {
		p, _, _ := r.iface(lab.Receiver)
		return p == "interface deleted"
	})
	if r.Total.Packets != 50 {
		t.Errorf("counts after the deletion: %d packets, want the 50 seen before", r.Total.Packets)
	}
	if p, _, _ := r.iface("swdummy0"); p != "" {
		t.Errorf("swdummy0: %q, want no problem", p)
	}
	if !s.waitStderr(lab.Receiver + ": interface deleted") {
		t.Errorf("stderr does not say the interface was deleted: %s", s.stderr)
	}
	// The metrics too: the collector learns it with the report that said so.
	fams := scrape(t, lab.NSB, "127.0.0.1:9464")
	for _, c := range []struct {
		metric string
		labels map[string]string
		want   float64
	}{
		{"spiwatch_interface_up", map[string]string{"interface": lab.Receiver}, 0},
		{"spiwatch_interface_up", map[string]string{"interface": "swdummy0"}, 1},
		{"spiwatch_interface_problem", map[string]string{"interface": lab.Receiver, "problem": "interface deleted"}, 1},
		{"spiwatch_packets_total", map[string]string{"interface": lab.Receiver, "class": "esp", "outcome": "unknown"}, 50},
	} {
		if got, found := value(t, fams, c.metric, c.labels); !found || got != c.want {
			t.Errorf("%s%v = %v (found %v), want %v", c.metric, c.labels, got, found, c.want)
		}
	}
	if _, found := value(t, fams, "spiwatch_interface_problem", map[string]string{"interface": "swdummy0"}); found {
		t.Error("swdummy0 has a problem series, but it is watched and up")
	}
	// Counting goes on on the interface left: frames sent into swdummy0 (from its
	// peer) are counted there, on top of the deleted one's.
	runGen(t, gen, lab.NSB, "swdummy1", []string{"esp spi=0xbeef count=25"})
	r = s.waitReport(t, "frames sent into swdummy0 after the deletion counted", func(r linkReport) bool {
		_, n, _ := r.iface("swdummy0")
		return n >= 25
	})
	if _, n, _ := r.iface("swdummy0"); n != 25 || r.Total.Packets != 75 {
		t.Errorf("swdummy0 counted %d, total %d; want 25 and 75", n, r.Total.Packets)
	}
	// Then the last one goes: spiwatch ends with status 1 and says why.
	exec.Command("ip", "-n", lab.NSB, "link", "del", "swdummy0").Run()
	for range s.lines {
	}
	err := <-s.done
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 1 || !strings.Contains(s.stderr.String(), "no interface left to watch") {
		t.Errorf("after every interface was deleted: %v: %s", err, s.stderr)
	}
}

// TestWaitIface: with --wait-iface, a deleted interface that comes back (same name)
// is watched again, its counts continuing; spiwatch does not end meanwhile.
func TestWaitIface(t *testing.T) {
	testenv.RequireNetns(t)
	spiwatch, gen := buildBinaries(t)
	lab := newLab(t, "swwait")
	s := startSpiwatch(t, spiwatch, lab.NSB, "-i", lab.Receiver, "--wait-iface", "--json", "--interval", "100ms")
	runGen(t, gen, lab.NSA, lab.Sender, []string{"esp spi=0xdead count=30"})
	s.waitTotal(t, 30)
	if out, err := exec.Command("ip", "netns", "exec", lab.NSA, "ip", "link", "del", lab.Sender).CombinedOutput(); err != nil {
		t.Fatalf("deleting the veth pair: %v: %s", err, out)
	}
	if !s.waitStderr(lab.Receiver + ": interface deleted") {
		t.Fatalf("deletion not noticed: %s", s.stderr)
	}
	// The pair comes back under the same names.
	for _, args := range [][]string{
		{"link", "add", lab.Sender, "netns", lab.NSA, "type", "veth", "peer", "name", lab.Receiver, "netns", lab.NSB},
		{"-n", lab.NSA, "link", "set", lab.Sender, "up"},
		{"-n", lab.NSB, "link", "set", lab.Receiver, "up"},
	} {
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %v: %v: %s", args, err, out)
		}
	}
	if !s.waitStderr(lab.Receiver + " is back: watching it again") {
		t.Fatalf("not re-attached: %s", s.stderr)
	}
	runGen(t, gen, lab.NSA, lab.Sender, []string{"esp spi=0xdead count=20"})
	s.waitTotal(t, 50)
	o := s.stop(t)
	if o.Total.Packets != 50 {
		t.Errorf("%d packets, want 30 before and 20 after the interface came back", o.Total.Packets)
	}
}
