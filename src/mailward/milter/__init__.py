"""milter"""
