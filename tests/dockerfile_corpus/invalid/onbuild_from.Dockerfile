FROM busybox
onbuild from alpine
