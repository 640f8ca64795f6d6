# A library only the tests know: what the probe sensor's bundle instruments.
class Worker(object):
    def run(self, n):
        return n * 2
