// SPDX-License-Identifier: Apache-2.0

// Package capwrite writes spiwatch capture's pcapng files: one interface block per
// interface, each packet with a comment saying why it was kept, to a file (rotated
// by size, keeping a number of files) or to a stream such as stdout.
//
// gopacket's pcapgo.NgWriter (v1.1.19) writes the section header and interface
// blocks, but its enhanced packet blocks carry no options, so no comment: packets
// are written here as enhanced packet blocks with an opt_comment (pcapng, RFC
// draft-ietf-opsawg-pcapng section 4.3), in the little-endian byte order NgWriter
// gives the section.
package capwrite

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/google/gopacket/layers"
	"github.com/google/gopacket/pcapgo"
)

// Interface describes one interface block.
type Interface struct {
	Name        string
	Description string
	SnapLen     uint32
}

// Packet is one packet to write.
type Packet struct {
	Time    time.Time
	Iface   int // index into Options.Interfaces
	Data    []byte
	Length  int // length on the wire; at least len(Data)
	Comment string
}

// Options say what the files hold and how they rotate.
type Options struct {
	Interfaces []Interface
	// RotateBytes, if not 0: once a file holds this many bytes it is closed and a
	// new one started (each a complete pcapng file).
	RotateBytes int64
	// Keep is how many files are kept with rotation, the one being written
	// included: PATH is the newest, PATH.1 the one before, up to PATH.<Keep-1>.
	Keep        int
	Application string // written in the section header
}

// Writer writes packets to one file or stream at a time.
type Writer struct {
	path   string // "" for a stream
	opts   Options
	stream io.Writer
	f      *os.File
	bw     *blockWriter
	ng     *pcapgo.NgWriter
	files  int // files started
	buf    []byte
	// packets that reached files already closed (rotated) whole
	packets uint64
}

// blockWriter buffers whole blocks (one per Write) and writes them out together.
// If a write fails part way (a full disk), the file is cut back to the end of the
// last block that reached it whole, so it stays readable with every packet in it.
type blockWriter struct {
	out     io.Writer
	f       *os.File // nil for a stream
	buf     []byte
	ends    []int // where each block in buf ends
	flushed int64
	whole   uint64 // blocks that reached out whole
}

const flushAt = 256 << 10

// maxComment is the longest opt_comment (a 16-bit length); longer ones are cut
// and end in cut.
const (
	maxComment = 0xffff
	cut        = "..."
)

func (b *blockWriter) Write(p []byte) (int, error) {
	b.buf = append(b.buf, p...)
	b.ends = append(b.ends, len(b.buf))
	if len(b.buf) >= flushAt {
		if err := b.Flush(); err != nil {
			return 0, err
		}
	}
	return len(p), nil
}

func (b *blockWriter) Flush() error {
	if len(b.buf) == 0 {
		return nil
	}
	n, err := b.out.Write(b.buf)
	if err != nil {
		whole := 0
		for _, e := range b.ends {
			if e <= n {
				whole = e
			}
		}
		if b.f != nil && n > whole {
			_ = b.f.Truncate(b.flushed + int64(whole))
			_, _ = b.f.Seek(b.flushed+int64(whole), io.SeekStart)
		}
		for _, e := range b.ends {
			if e <= whole {
				b.whole++
			}
		}
		b.flushed += int64(whole)
		b.buf, b.ends = b.buf[:0], b.ends[:0]
		return err
	}
	b.flushed += int64(n)
	b.whole += uint64(len(b.ends))
	b.buf, b.ends = b.buf[:0], b.ends[:0]
	return nil
}

func (b *blockWriter) size() int64 { return b.flushed + int64(len(b.buf)) }

// Create starts writing to path; "-" writes to stream instead (no rotation).
func Create(path string, stream io.Writer, o Options) (*Writer, error) {
	if len(o.Interfaces) == 0 {
		return nil, errors.New("a capture file needs at least one interface")
	}
	if o.RotateBytes < 0 || (o.RotateBytes > 0 && o.Keep < 1) {
		return nil, fmt.Errorf("rotation needs a size above 0 and at least 1 file kept (got %d bytes, %d files)", o.RotateBytes, o.Keep)
	}
	w := &Writer{opts: o}
	if path == "-" {
		if o.RotateBytes > 0 {
			return nil, errors.New("output to stdout (-w -) cannot rotate")
		}
		w.stream = stream
	} else {
		w.path = path
	}
	if err := w.open(); err != nil {
		return nil, err
	}
	return w, nil
}

// Path is the file being written ("-" for the stream).
func (w *Writer) Path() string {
	if w.path == "" {
		return "-"
	}
	return w.path
}

// Files is how many files were started (1 without rotation).
func (w *Writer) Files() int { return w.files }

// Packets is how many packets reached the files (or the stream) whole: after a
// write error, fewer than were written, since the buffered ones are gone.
func (w *Writer) Packets() uint64 {
	if w.bw == nil {
		return w.packets
	}
	return w.packets + w.bw.whole
}

func (w *Writer) open() error {
	if w.bw != nil { // the packets of the file rotated out
		w.packets += w.bw.whole
		w.bw = nil
	}
	out := w.stream
	if w.path != "" {
		f, err := os.OpenFile(w.path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
		if err != nil {
			return fmt.Errorf("creating capture file: %w", err)
		}
		w.f, out = f, f
	}
	w.bw = &blockWriter{out: out, f: w.f, buf: make([]byte, 0, flushAt+64<<10)}
	app := w.opts.Application
	if app == "" {
		app = "spiwatch"
	}
	ifs := w.opts.Interfaces
	ng, err := pcapgo.NewNgWriterInterface(w.bw, ngInterface(ifs[0]), pcapgo.NgWriterOptions{
		SectionInfo: pcapgo.NgSectionInfo{Hardware: runtime.GOARCH, OS: runtime.GOOS, Application: app},
	})
	if err == nil {
		for _, i := range ifs[1:] {
			if _, err = ng.AddInterface(ngInterface(i)); err != nil {
				break
			}
		}
	}
	if err == nil {
		err = ng.Flush() // into w.bw: packets follow the header blocks
	}
	if err == nil {
		err = w.bw.Flush() // a file that exists is a valid pcapng file
	}
	w.bw.whole = 0 // header blocks; only packets are counted
	if err != nil {
		w.closeFile()
		return w.fileError(err)
	}
	w.ng = ng
	w.files++
	return nil
}

func ngInterface(i Interface) pcapgo.NgInterface {
	return pcapgo.NgInterface{
		Name: i.Name, Description: i.Description, LinkType: layers.LinkTypeEthernet,
		SnapLength: i.SnapLen, TimestampResolution: 9, OS: runtime.GOOS,
	}
}

func (w *Writer) fileError(err error) error {
	var pe *os.PathError
	if errors.As(err, &pe) {
		err = pe.Err // the path is said once
	}
	return fmt.Errorf("writing capture file %s: %w", w.Path(), err)
}

// Write appends one packet, rotating first if the file is full.
func (w *Writer) Write(p Packet) error {
	if w.ng == nil {
		return errors.New("capture file is closed")
	}
	if p.Iface < 0 || p.Iface >= len(w.opts.Interfaces) {
		return fmt.Errorf("packet for interface %d: the file has %d", p.Iface, len(w.opts.Interfaces))
	}
	if p.Length < len(p.Data) {
		p.Length = len(p.Data)
	}
	// An option's length is 16 bits: a longer comment would corrupt the block.
	if len(p.Comment) > maxComment {
		p.Comment = strings.ToValidUTF8(p.Comment[:maxComment-len(cut)], "") + cut
	}
	if w.opts.RotateBytes > 0 && w.bw.size() >= w.opts.RotateBytes {
		if err := w.rotate(); err != nil {
			return err
		}
	}
	pad := func(n int) int { return (4 - n&3) & 3 }
	optLen := 0
	if p.Comment != "" {
		optLen = 4 + len(p.Comment) + pad(len(p.Comment)) + 4 // opt_comment, opt_endofopt
	}
	total := 28 + len(p.Data) + pad(len(p.Data)) + optLen + 4
	b := w.buf[:0]
	le := binary.LittleEndian
	ts := uint64(p.Time.UnixNano())
	b = le.AppendUint32(b, 6) // enhanced packet block
	b = le.AppendUint32(b, uint32(total))
	b = le.AppendUint32(b, uint32(p.Iface))
	b = le.AppendUint32(b, uint32(ts>>32))
	b = le.AppendUint32(b, uint32(ts))
	b = le.AppendUint32(b, uint32(len(p.Data)))
	b = le.AppendUint32(b, uint32(p.Length))
	b = append(b, p.Data...)
	b = append(b, make([]byte, pad(len(p.Data)))...)
	if p.Comment != "" {
		b = le.AppendUint16(b, 1) // opt_comment
		b = le.AppendUint16(b, uint16(len(p.Comment)))
		b = append(b, p.Comment...)
		b = append(b, make([]byte, pad(len(p.Comment)))...)
		b = le.AppendUint32(b, 0) // opt_endofopt
	}
	b = le.AppendUint32(b, uint32(total))
	w.buf = b
	if _, err := w.bw.Write(b); err != nil {
		return w.fileError(err)
	}
	return nil
}

// Flush writes buffered packets out.
func (w *Writer) Flush() error {
	if w.bw == nil {
		return nil
	}
	if err := w.bw.Flush(); err != nil {
		return w.fileError(err)
	}
	return nil
}

// rotate closes the current file, shifts PATH to PATH.1 and so on (dropping the
// oldest beyond Keep) and starts a new PATH.
func (w *Writer) rotate() error {
	if err := w.Flush(); err != nil {
		return err
	}
	if err := w.closeFile(); err != nil {
		return w.fileError(err)
	}
	name := func(i int) string {
		if i == 0 {
			return w.path
		}
		return w.path + "." + strconv.Itoa(i)
	}
	if err := os.Remove(name(w.opts.Keep - 1)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("rotating capture files: %w", err)
	}
	for i := w.opts.Keep - 2; i >= 0; i-- {
		if err := os.Rename(name(i), name(i+1)); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("rotating capture files: %w", err)
		}
	}
	return w.open()
}

func (w *Writer) closeFile() error {
	w.ng = nil
	if w.f == nil {
		return nil
	}
	err := w.f.Close()
	w.f = nil
	return err
}

// Close flushes and closes the file. After a write error the file holds every
// packet whose block reached it whole; the rest are gone.
func (w *Writer) Close() error {
	if w.ng == nil && w.f == nil {
		return nil
	}
	err := w.Flush()
	if cerr := w.closeFile(); err == nil && cerr != nil {
		err = w.fileError(cerr)
	}
	if w.bw != nil {
		w.packets += w.bw.whole
	}
	w.bw = nil
	return err
}
