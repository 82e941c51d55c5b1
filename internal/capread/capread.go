// SPDX-License-Identifier: Apache-2.0

// Package capread reads pcap and pcapng captures (optionally
// gzip-compressed) for offline classification, and converts every frame
// to the Ethernet frame an XDP program would see. See ToEthernet for the
// link types it converts and how.
//
// The file formats are read with gopacket's pcapgo; capread works around
// what pcapgo v1.1.19 gets wrong for this use: it accepts snap length 0,
// reports a capture cut inside a record as ErrTruncated (pcapgo says
// io.EOF or io.ErrUnexpectedEOF), keeps 16-bit link types (pcapgo
// truncates them to 8 bits, which turns SLL2 into 20), reads pcapng
// files whose interfaces have different link types (pcapgo's defaults
// silently skip their packets), and gives exact times for pcapng
// timestamps in binary units (pcapgo scales them with integer factors).
package capread

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/bits"
	"os"
	"slices"
	"time"

	"github.com/google/gopacket/pcapgo"
)

// Packet is one captured frame, converted to Ethernet.
type Packet struct {
	Index int // 1-based packet number in the file
	Time  time.Time
	// Data is the Ethernet frame (converted if the link type was not
	// Ethernet; from NextRaw, the frame as captured). It is valid until
	// the next call to Next or NextRaw.
	Data    []byte
	CapLen  int // bytes captured (of the original link-layer frame)
	OrigLen int // bytes on the wire
	// WireLen (set by Next) is the length on the wire of the frame in
	// Data: OrigLen, changed by as much as the link-layer header was; at
	// least len(Data). It is more than len(Data) when the capture's snap
	// length cut the frame.
	WireLen   int
	Interface int      // pcapng interface index within its section (0 for pcap)
	LinkType  LinkType // link type of the frame as captured
}

// Errors a Reader's errors wrap, for errors.Is. The packets returned
// before ErrTruncated or ErrCorrupt are good: callers may treat those
// errors as a partial read.
var (
	// ErrNotCapture: the input is empty or not a pcap or pcapng file.
	ErrNotCapture = errors.New("not a pcap or pcapng file")
	// ErrTruncated: the input ends inside a header, record or block.
	ErrTruncated = errors.New("truncated capture")
	// ErrCorrupt: a header, record or block cannot be parsed.
	ErrCorrupt = errors.New("corrupt capture")
	// ErrUnsupportedLinkType: frames of this link type cannot be
	// converted to Ethernet.
	ErrUnsupportedLinkType = errors.New("unsupported link type")
)

// capError is an error with its own message that wraps a kind (one of the
// Err variables above) and, optionally, the error that caused it.
type capError struct {
	msg  string
	errs []error
}

func (e *capError) Error() string   { return e.msg }
func (e *capError) Unwrap() []error { return e.errs }

func newError(kind, cause error, format string, args ...any) error {
	e := &capError{msg: fmt.Sprintf(format, args...)}
	if errors.Is(cause, io.EOF) {
		// pcapgo says io.EOF when a block is cut: wrapped, it would read as the
		// clean end callers stop at (errors.Is(err, io.EOF)), hiding the cut.
		cause = nil
	}
	for _, err := range []error{kind, cause} {
		if err != nil {
			e.errs = append(e.errs, err)
		}
	}
	return e
}

func errUnsupported(lt LinkType) error {
	return newError(ErrUnsupportedLinkType, nil, "link type %s is not supported: %s", lt.describe(), supportedHint)
}

// File magics, as the first four bytes read big-endian.
const (
	magicMicroLE   = 0xd4c3b2a1
	magicMicroBE   = 0xa1b2c3d4
	magicNanoLE    = 0x4d3cb2a1
	magicNanoBE    = 0xa1b23c4d
	magicModLE     = 0x34cdb2a1 // Kuznetsov's modified pcap, unsupported by pcapgo
	magicModBE     = 0xa1b2cd34
	magicPcapng    = ngSectionHeader
	gzipMagic      = 0x1f8b
	pcapHeaderLen  = 24
	pcapRecordLen  = 16
	bufferSize     = 64 << 10
	linkTypeMask   = 0xffff // LT_LINKTYPE: the upper bits carry FCS information
	maxPcapSnaplen = 262144 // libpcap's MAXIMUM_SNAPLEN
)

// Reader reads packets from a pcap or pcapng capture. It is not safe for
// concurrent use.
type Reader struct {
	name    string
	closers []io.Closer
	cnt     *counter
	br      *bufio.Reader

	pcap     *pcapgo.Reader
	linkType LinkType // of the pcap file

	ng   *pcapgo.NgReader
	walk *ngWalker

	n   int   // packets returned
	err error // sticky: io.EOF or the error that stopped reading
	buf []byte
}

// Open opens the capture at path, telling pcap (either byte order,
// microsecond or nanosecond timestamps) from pcapng by content, not by
// name; gzip-compressed captures are read too. Errors name the file.
func Open(path string) (*Reader, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("opening capture: %w", err)
	}
	r, err := NewReader(f, path)
	if err != nil {
		f.Close()
		return nil, err
	}
	r.closers = append(r.closers, f)
	return r, nil
}

// NewReader reads a capture from rd; name is used in errors. Close does
// not close rd.
func NewReader(rd io.Reader, name string) (*Reader, error) {
	r := &Reader{name: name}
	r.setStream(rd)
	magic, err := r.peek(4, "file")
	if err != nil {
		return nil, err
	}
	if binary.BigEndian.Uint16(magic) == gzipMagic {
		zr, err := gzip.NewReader(r.br)
		if err != nil {
			return nil, r.streamError(err, "reading gzip header")
		}
		r.closers = append(r.closers, zr)
		r.setStream(zr)
		if magic, err = r.peek(4, "decompressed file"); err != nil {
			return nil, err
		}
	}
	switch m := binary.BigEndian.Uint32(magic); m {
	case magicPcapng:
		err = r.openNg()
	case magicMicroLE, magicNanoLE:
		err = r.openPcap(binary.LittleEndian)
	case magicMicroBE, magicNanoBE:
		err = r.openPcap(binary.BigEndian)
	case magicModLE, magicModBE:
		err = newError(ErrNotCapture, nil, "%s: modified (Kuznetsov) pcap format (magic 0x%08x) is not supported: convert it with editcap -F pcap", name, m)
	default:
		err = newError(ErrNotCapture, nil, "%s: not a pcap or pcapng file (magic 0x%08x)", name, m)
	}
	if err != nil {
		return nil, err
	}
	return r, nil
}

// setStream makes rd the stream pcapgo reads, through a counter and a
// bufio.Reader that pcapgo uses as it is (bufio.NewReader returns a large
// enough *bufio.Reader unchanged), so that the bytes it consumed are
// known.
func (r *Reader) setStream(rd io.Reader) {
	r.cnt = &counter{r: rd}
	r.br = bufio.NewReaderSize(r.cnt, bufferSize)
}

// consumed returns how many bytes of the stream pcapgo has read.
func (r *Reader) consumed() int64 {
	return r.cnt.n - int64(r.br.Buffered())
}

// peek returns the first n bytes of the stream.
func (r *Reader) peek(n int, what string) ([]byte, error) {
	b, err := r.br.Peek(n)
	switch {
	case err == nil:
		return b, nil
	case !r.cnt.ended():
		return nil, r.streamError(err, "reading "+what)
	case len(b) == 0:
		return nil, newError(ErrNotCapture, nil, "%s: empty %s, not a pcap or pcapng capture", r.name, what)
	}
	return nil, newError(ErrNotCapture, nil, "%s: %s too short (%d bytes) to be a pcap or pcapng capture", r.name, what, len(b))
}

// streamError reports an error of the underlying reader (or gzip).
func (r *Reader) streamError(err error, doing string) error {
	if r.cnt.err != nil && !errors.Is(r.cnt.err, io.EOF) {
		err = r.cnt.err
	}
	kind := ErrCorrupt
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		kind = ErrTruncated
	}
	return newError(kind, err, "%s: %s: %v", r.name, doing, err)
}

func (r *Reader) openPcap(order binary.ByteOrder) error {
	hdr, err := r.br.Peek(pcapHeaderLen)
	if err != nil {
		if !r.cnt.ended() {
			return r.streamError(err, "reading pcap header")
		}
		return newError(ErrTruncated, err, "%s: truncated pcap file header (%d of %d bytes)", r.name, len(hdr), pcapHeaderLen)
	}
	r.linkType = LinkType(order.Uint32(hdr[20:24]) & linkTypeMask)
	if r.pcap, err = pcapgo.NewReader(r.br); err != nil {
		return newError(ErrCorrupt, err, "%s: reading pcap header: %v", r.name, err)
	}
	// pcapgo rejects every record longer than the header's snap length,
	// so all of them when it is 0; like libpcap, accept records up to its
	// maximum instead.
	r.pcap.SetSnaplen(maxPcapSnaplen)
	return nil
}

func (r *Reader) openNg() (err error) {
	// Restart the stream with the walker watching from its first byte:
	// what has been read so far has only been peeked at.
	b, _ := r.br.Peek(r.br.Buffered())
	r.setStream(io.MultiReader(bytes.NewReader(bytes.Clone(b)), r.cnt.r))
	r.walk = &ngWalker{}
	r.cnt.ng = r.walk
	defer func() {
		if p := recover(); p != nil {
			err = newError(ErrCorrupt, nil, "%s: corrupt pcapng section header (%v)", r.name, p)
		}
	}()
	// WantMixedLinkType: without it pcapgo skips the packets of
	// interfaces whose link type differs from the first one's.
	r.ng, err = pcapgo.NewNgReader(r.br, pcapgo.NgReaderOptions{WantMixedLinkType: true})
	if err != nil {
		if err := r.ngError(err); err != io.EOF {
			return err
		}
		return newError(ErrTruncated, nil, "%s: no pcapng section header", r.name)
	}
	return nil
}

// LinkTypes returns the link type of each interface: the one of a pcap
// file; for pcapng, those of the section being read, indexed by interface
// ID, as far as they have been read (a pcapng file may describe more
// interfaces later).
func (r *Reader) LinkTypes() []LinkType {
	if r.pcap != nil {
		return []LinkType{r.linkType}
	}
	if r.walk == nil {
		return nil
	}
	s := r.walk.section(r.consumed())
	if s == nil {
		return nil
	}
	return slices.Clone(s.linkTypes)
}

// Next returns the next packet with its frame converted to Ethernet (see
// ToEthernet: a frame too short for its link-layer header, or of an
// unknown protocol or address family, comes with EtherType 0 rather than
// being dropped, so that counts match packet numbers). It returns io.EOF
// after the last packet. A capture that ends inside a record gives an
// error wrapping ErrTruncated, one that cannot be parsed ErrCorrupt, both
// naming the file and the packet number; a pcap file or pcapng interface
// of a link type that cannot be converted gives ErrUnsupportedLinkType.
// After an error, Next returns the same error again.
func (r *Reader) Next() (Packet, error) {
	if r.err == nil && r.pcap != nil && !r.linkType.Supported() {
		r.err = fmt.Errorf("%s: %w", r.name, errUnsupported(r.linkType))
	}
	p, err := r.NextRaw()
	if err != nil {
		return p, err
	}
	eth, _, err := ToEthernet(r.buf, p.LinkType, p.Data)
	if err != nil {
		r.err = fmt.Errorf("%s: packet %d (interface %d): %w", r.name, p.Index, p.Interface, err)
		return Packet{}, r.err
	}
	if p.LinkType != LinkTypeEthernet {
		r.buf = eth
	}
	p.Data = eth
	p.WireLen = len(eth) + max(p.OrigLen-p.CapLen, 0)
	return p, nil
}

// NextRaw is Next without the conversion: Data is the frame as captured,
// of link type p.LinkType, whatever that is.
func (r *Reader) NextRaw() (p Packet, err error) {
	if r.err != nil {
		return Packet{}, r.err
	}
	defer func() {
		if v := recover(); v != nil {
			err = newError(ErrCorrupt, nil, "%s: packet %d: corrupt capture (%v)", r.name, r.n+1, v)
		}
		if err != nil {
			p, r.err = Packet{}, err
			return
		}
		r.n++
		p.Index = r.n
	}()
	if r.pcap != nil {
		return r.nextPcap()
	}
	return r.nextNg()
}

func (r *Reader) nextPcap() (Packet, error) {
	start := r.consumed()
	data, ci, err := r.pcap.ZeroCopyReadPacketData()
	if err == nil {
		return Packet{Time: ci.Timestamp, Data: data, CapLen: len(data), OrigLen: ci.Length, LinkType: r.linkType}, nil
	}
	n := r.n + 1
	if r.cnt.err != nil && !r.cnt.ended() {
		return Packet{}, newError(nil, r.cnt.err, "%s: packet %d: reading: %v", r.name, n, r.cnt.err)
	}
	got := r.consumed() - start
	switch {
	case errors.Is(err, io.EOF) && got == 0:
		return Packet{}, io.EOF
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		if got < pcapRecordLen {
			return Packet{}, newError(ErrTruncated, err, "%s: packet %d: truncated record header (%d of %d bytes)", r.name, n, got, pcapRecordLen)
		}
		return Packet{}, newError(ErrTruncated, err, "%s: packet %d: truncated record (%d of %d bytes)", r.name, n, got-pcapRecordLen, ci.CaptureLength)
	case ci.CaptureLength > maxPcapSnaplen:
		return Packet{}, newError(ErrCorrupt, err, "%s: packet %d: corrupt record header: captured length %d is over the maximum of %d", r.name, n, ci.CaptureLength, maxPcapSnaplen)
	case ci.CaptureLength > ci.Length:
		return Packet{}, newError(ErrCorrupt, err, "%s: packet %d: corrupt record header: captured length %d is over the length on the wire %d", r.name, n, ci.CaptureLength, ci.Length)
	}
	return Packet{}, newError(ErrCorrupt, err, "%s: packet %d: corrupt record: %v", r.name, n, err)
}

func (r *Reader) nextNg() (Packet, error) {
	data, ci, err := r.ng.ReadPacketData()
	if err != nil {
		return Packet{}, r.ngError(err)
	}
	p := Packet{Time: ci.Timestamp, Data: data, CapLen: len(data), OrigLen: ci.Length, Interface: ci.InterfaceIndex}
	if len(r.walk.stamps) > 0 {
		st := r.walk.stamps[0]
		r.walk.stamps = r.walk.stamps[1:]
		if t, ok := r.ngTime(ci.InterfaceIndex, st); ok {
			p.Time = t
		}
	}
	s := r.walk.section(r.consumed())
	if s == nil || ci.InterfaceIndex >= len(s.linkTypes) {
		return Packet{}, newError(ErrCorrupt, nil, "%s: packet %d: interface %d is not described", r.name, r.n+1, ci.InterfaceIndex)
	}
	p.LinkType = s.linkTypes[ci.InterfaceIndex]
	return p, nil
}

// ngTime returns the time of a packet of interface iface with raw timestamp
// st where pcapgo gets it wrong: with a binary resolution (if_tsresol with
// its high bit set; it scales with integer factors: 2^-30 s makes times up to
// 74 ms late, past the next second, 2^-20 s up to 0.7 ms early), or a decimal
// one too fine for its uint64 arithmetic. ok is false where pcapgo's time
// stands.
func (r *Reader) ngTime(iface int, st ngStamp) (t time.Time, ok bool) {
	intf, err := r.ng.Interface(iface)
	if err != nil || !st.ok {
		return t, false
	}
	res := intf.TimestampResolution
	e := uint(res.Exponent())
	var sec, ns uint64
	switch {
	case res.Binary():
		// ts / 2^e seconds: whole seconds, then the fraction in nanoseconds,
		// (frac * 10^9) >> e over 128 bits.
		frac := st.ts
		if e < 64 {
			sec, frac = st.ts>>e, st.ts&(1<<e-1)
		}
		hi, lo := bits.Mul64(frac, 1e9)
		if e < 64 {
			ns = hi<<(64-e) | lo>>e
		} else {
			ns = hi >> (e - 64)
		}
	case e >= 20:
		// 10^e is over 2^64, so over any timestamp: under a second.
		if e-9 < 20 {
			ns = st.ts / pow10(e-9)
		}
	default:
		return t, false
	}
	return time.Unix(int64(sec+intf.TimestampOffset), int64(ns)).UTC(), true
}

// pow10 returns 10^n for n < 20.
func pow10(n uint) uint64 {
	p := uint64(1)
	for range n {
		p *= 10
	}
	return p
}

// ngBlockNames names pcapng blocks other than packet blocks in errors.
var ngBlockNames = map[uint32]string{
	ngSectionHeader: "section header block",
	ngInterface:     "interface description block",
	4:               "name resolution block",
	5:               "interface statistics block",
}

// ngError turns an error of pcapgo's NgReader into io.EOF or a capread
// error, using the walker to tell a clean end from a truncated block.
func (r *Reader) ngError(err error) error {
	n := r.n + 1
	where := fmt.Sprintf("packet %d: ", n)
	if r.ng == nil {
		where = "" // opening
	}
	if r.walk.err != nil && errors.Is(r.cnt.err, errBadBlock) {
		return newError(ErrCorrupt, nil, "%s: %scorrupt pcapng: %v", r.name, where, r.walk.err)
	}
	if r.cnt.err != nil && !r.cnt.ended() {
		return newError(nil, r.cnt.err, "%s: packet %d: reading: %v", r.name, n, r.cnt.err)
	}
	if got, want, typ, ok := r.walk.partial(); ok && r.cnt.ended() {
		switch {
		case r.ng == nil && want == 0:
			return newError(ErrTruncated, err, "%s: truncated pcapng section header (%d bytes)", r.name, got)
		case want == 0:
			return newError(ErrTruncated, err, "%s: packet %d: truncated block header (%d of %d bytes)", r.name, n, got, ngBlockHeaderLen)
		case typ == ngEnhancedPacket || typ == ngSimplePacket || typ == ngPacketObsolete:
			return newError(ErrTruncated, err, "%s: packet %d: truncated record (%d of %d bytes)", r.name, n, got, want)
		}
		name, ok := ngBlockNames[typ]
		if !ok {
			name = fmt.Sprintf("block of type 0x%08x", typ)
		}
		if r.n == 0 {
			return newError(ErrTruncated, err, "%s: truncated %s (%d of %d bytes)", r.name, name, got, want)
		}
		return newError(ErrTruncated, err, "%s: after packet %d: truncated %s (%d of %d bytes)", r.name, r.n, name, got, want)
	}
	if errors.Is(err, io.EOF) {
		if r.walk.packets > r.n {
			return newError(ErrCorrupt, err, "%s: packet %d: corrupt record: captured data runs past the end of its block", r.name, n)
		}
		return io.EOF
	}
	return newError(ErrCorrupt, err, "%s: %scorrupt pcapng block: %v", r.name, where, err)
}

// Close releases the file opened by Open. Next then fails.
func (r *Reader) Close() error {
	var errs []error
	for _, c := range slices.Backward(r.closers) {
		errs = append(errs, c.Close())
	}
	r.closers = nil
	if r.err == nil || r.err == io.EOF {
		r.err = fmt.Errorf("%s: %w", r.name, os.ErrClosed)
	}
	return errors.Join(errs...)
}
