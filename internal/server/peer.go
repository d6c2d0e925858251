package server

import (
	"net"
	"syscall"

	"golang.org/x/sys/unix"
)

func umask(m int) int { return syscall.Umask(m) }

// credListener closes connections from non-root peers at accept, by the
// kernel's word (SO_PEERCRED), on top of the socket's 0600 mode.
type credListener struct{ net.Listener }

// RootOnly wraps a unix listener so that only uid 0 may connect.
func RootOnly(ln net.Listener) net.Listener { return credListener{ln} }

func (l credListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		uc, ok := c.(*net.UnixConn)
		if !ok {
			return c, nil
		}
		raw, err := uc.SyscallConn()
		if err != nil {
			c.Close()
			continue
		}
		var cred *unix.Ucred
		var cerr error
		err = raw.Control(func(fd uintptr) { cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED) })
		if err != nil || cerr != nil || cred == nil || cred.Uid != 0 {
			c.Close()
			continue
		}
		return c, nil
	}
}
